"""Deterministic training batches: step t always yields the same images and captions.

The global batch of step t is a slice of a seeded per-epoch permutation (the last partial batch
of an epoch is dropped); under DDP rank r takes the r-th contiguous part, so the union over ranks
is exactly the single-process batch of size ``batch_size × world_size``. Which of an image's
captions is used is drawn from a generator seeded by (seed, step). Hence a resumed run sees the
same data as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from cma.data import EmbeddedWorld
from cma.models.batching import CaptionBank, uint8_normalizer

Batch = tuple[int, Tensor, Tensor]  # (step, images (B, 3, H, W), tokens (B, L))


def _generator(*seeds: int) -> torch.Generator:
    value = 0
    for s in seeds:
        value = (value * 1_000_003 + int(s)) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


@dataclass(frozen=True)
class StepPlan:
    """Which dataset indices step t uses, for this rank."""

    n_items: int
    batch_size: int  # per rank
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.global_batch > self.n_items:
            raise ValueError(
                f"batch_size: the global batch ({self.global_batch}) exceeds the dataset "
                f"({self.n_items} items)"
            )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.n_items // self.global_batch

    def indices(self, step: int) -> Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.n_items, generator=_generator(self.seed, epoch))
        start = pos * self.global_batch + self.rank * self.batch_size
        return order[start : start + self.batch_size]


class EmbeddedBatches:
    """Batches of the embedded world straight from its uint8 image array (no DataLoader)."""

    def __init__(
        self, world: EmbeddedWorld, model: torch.nn.Module, tokenizer: Callable, plan: StepPlan
    ) -> None:
        self.images = torch.from_numpy(world.images)
        self.bank = CaptionBank(world, tokenizer)
        self.normalize = uint8_normalizer(model)
        self.plan = plan

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        idx = self.plan.indices(step)
        tokens = self.bank.sample(idx, _generator(self.plan.seed, step, 1))
        return self.normalize(self.images[idx]), tokens

    def iterate(self, start: int, stop: int) -> Iterator[Batch]:
        for step in range(start, stop):
            yield (step, *self.batch(step))


class _StepSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for each step in [start, stop), the (index, step) pairs of this rank's batch."""

    def __init__(self, plan: StepPlan, start: int, stop: int) -> None:
        self.plan, self.start, self.stop = plan, start, stop

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield [(int(i), step) for i in self.plan.indices(step)]

    def __len__(self) -> int:
        return self.stop - self.start


class _PairDataset(Dataset):
    """(index, step) -> (step, preprocessed image, tokens of a seeded choice of its captions)."""

    def __init__(self, dataset: Any, preprocess: Callable, tokenizer: Callable, seed: int) -> None:
        self.dataset, self.preprocess, self.tokenizer, self.seed = (
            dataset,
            preprocess,
            tokenizer,
            seed,
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Tensor, Tensor]:
        i, step = key
        image, _, _ = self.dataset[i]
        captions = self.dataset.captions_of(i)
        pick = int(torch.randint(len(captions), (1,), generator=_generator(self.seed, step, i)))
        return step, self.preprocess(image), self.tokenizer([captions[pick]])[0]


def _collate(items: list[tuple[int, Tensor, Tensor]]) -> Batch:
    steps, images, tokens = zip(*items, strict=True)
    return steps[0], torch.stack(images), torch.stack(tokens)


class FileBatches:
    """Batches of a map-style caption dataset (CSV, COCO, image folders) through a DataLoader."""

    def __init__(
        self,
        dataset: Any,
        preprocess: Callable,
        tokenizer: Callable,
        plan: StepPlan,
        workers: int = 0,
    ) -> None:
        self.pairs = _PairDataset(dataset, preprocess, tokenizer, plan.seed)
        self.plan, self.workers = plan, workers

    def iterate(self, start: int, stop: int) -> Iterator[Batch]:
        loader = DataLoader(
            self.pairs,
            batch_sampler=_StepSampler(self.plan, start, stop),
            num_workers=self.workers,
            collate_fn=_collate,
            persistent_workers=False,
        )
        yield from loader


class StreamBatches:
    """Batches of a streaming (webdataset) source; a resumed run skips the consumed batches."""

    def __init__(
        self, dataset: Any, preprocess: Callable, tokenizer: Callable, batch_size: int
    ) -> None:
        self.dataset, self.preprocess, self.tokenizer = dataset, preprocess, tokenizer
        self.batch_size = batch_size

    def iterate(self, start: int, stop: int) -> Iterator[Batch]:
        step, images, captions = 0, [], []
        while step < stop:
            produced = False
            for image, caption, _ in self.dataset:
                produced = True
                images.append(image)
                captions.append(caption)
                if len(images) < self.batch_size:
                    continue
                if step >= start:
                    batch = torch.stack([self.preprocess(im) for im in images])
                    yield step, batch, self.tokenizer(captions)
                step, images, captions = step + 1, [], []
                if step >= stop:
                    return
            if not produced:
                raise ValueError("train data: the webdataset stream yielded no samples")
