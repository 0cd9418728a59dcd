"""Captioning through the shared space (cross-modal substitution, as CapDec and C3 do).

A small decoder is trained to reproduce each training caption from its TEXT embedding, then
fed the IMAGE embeddings of the test images. The better image embeddings stand in for text
embeddings (the smaller the modality gap), the better the captions.

Decoder (*ours*): a prefix mapper ``MLP: R^d -> R^{P x H}`` turns the embedding into P input
vectors, followed by ``<bos>`` and the caption words, all read by a GRU whose initial state is
``tanh(W e)``; a linear head
predicts the next word over a vocabulary built from the training captions (no downloaded
language model). Trained with teacher forcing and cross-entropy; optional CapDec noise
``e + N(0, sigma^2 I)`` (fresh each step) on the training embeddings. Decoding: greedy, or beam
search ranked by ``sum log p / len^length_penalty``.

Scores: pycocoevalcap CIDEr (its ``Cider`` is CIDEr-D: clipped n-gram counts and a Gaussian
length penalty, sigma = 6), BLEU-4 and ROUGE-L against all references of each image, on our own
tokenisation (lower case, runs of ``[a-z0-9]``), not the Java PTB tokenizer.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional

from cma.eval._common import as_index, as_matrix

PAD, BOS, EOS, UNK = 0, 1, 2, 3
_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens: the runs of ``[a-z0-9]`` in ``text.lower()``."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class CaptionConfig:
    """Settings of the captioning probe (defaults sized for ~1 min on 2 CPU cores)."""

    max_captions: int = 12000  # training captions used (random subset when more)
    max_len: int = 20  # words per caption (longer ones are cut), <eos> excluded
    min_count: int = 2  # a word enters the vocabulary when seen this often
    hidden: int = 128  # GRU width = word-embedding width
    prefix_len: int = 2  # P prefix vectors produced by the mapper
    layers: int = 1
    dropout: float = 0.1
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1.5e-2  # high but stable with grad-norm clipping at 1 and one-cycle decay
    weight_decay: float = 1e-4
    noise_std: float = 0.0  # CapDec: per-coordinate std of Gaussian noise on training inputs
    decode: str = "greedy"  # which decoding feeds the metrics: "greedy" | "beam"
    beam_size: int = 3
    length_penalty: float = 0.0
    seed: int = 0
    threads: int = 1  # CPU threads while training/decoding (small sequential ops: 1 is fastest)

    def __post_init__(self) -> None:
        if self.decode not in ("greedy", "beam"):
            raise ValueError(f"decode must be 'greedy' or 'beam', got {self.decode!r}")
        for name in (
            "max_captions",
            "max_len",
            "min_count",
            "hidden",
            "prefix_len",
            "layers",
            "epochs",
            "batch_size",
            "beam_size",
            "threads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.noise_std < 0 or not 0 <= self.dropout < 1 or self.lr <= 0:
            raise ValueError("need noise_std >= 0, 0 <= dropout < 1 and lr > 0")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the old count after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Vocabulary:
    """Word <-> id map; ids 0-3 are ``<pad> <bos> <eos> <unk>``."""

    def __init__(self, words: Sequence[str]) -> None:
        self.itos: list[str] = list(_SPECIALS) + [w for w in words if w not in _SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, captions: Sequence[str], min_count: int = 1) -> Vocabulary:
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for c in captions for w in tokenize(c))
        words = [w for w, n in counts.items() if n >= min_count]
        words.sort(key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str, max_len: int) -> list[int]:
        """``[<bos>, w_1..w_n, <eos>]`` with n <= max_len, unknown words as ``<unk>``."""
        ids = [self.stoi.get(w, UNK) for w in tokenize(caption)[:max_len]]
        return [BOS, *ids, EOS]

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first ``<eos>``/``<pad>``; ``<bos>``/``<unk>`` dropped."""
        words = []
        for i in ids:
            if i in (EOS, PAD):
                break
            if i > UNK:
                words.append(self.itos[i])
        return " ".join(words)


class CaptionDecoder(nn.Module):
    """Prefix mapper + GRU language model conditioned on one embedding."""

    def __init__(self, dim: int, vocab_size: int, cfg: CaptionConfig) -> None:
        super().__init__()
        h, p = cfg.hidden, cfg.prefix_len
        self.prefix_len = p
        self.layers = cfg.layers
        self.mapper = nn.Sequential(nn.Linear(dim, h), nn.GELU(), nn.Linear(h, p * h))
        self.init = nn.Linear(dim, cfg.layers * h)  # the GRU's initial state
        self.embed = nn.Embedding(vocab_size, h, padding_idx=PAD)
        self.gru = nn.GRU(
            h,
            h,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(h, vocab_size)

    def _prefix(self, emb: Tensor) -> Tensor:
        return self.mapper(emb).view(emb.shape[0], self.prefix_len, -1)

    def _state(self, emb: Tensor) -> Tensor:
        return torch.tanh(self.init(emb)).view(emb.shape[0], self.layers, -1).transpose(0, 1)

    def forward(self, emb: Tensor, tokens: Tensor) -> Tensor:
        """Next-word logits (B, T, V) for input ``tokens`` (B, T) starting with ``<bos>``."""
        inputs = torch.cat([self._prefix(emb), self.embed(tokens)], dim=1)
        out, _ = self.gru(self.drop(inputs), self._state(emb).contiguous())
        return self.head(self.drop(out[:, self.prefix_len :]))

    def start(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities of the first word (B, V) and the GRU state after prefix + <bos>."""
        bos = self.embed(torch.full((emb.shape[0], 1), BOS, dtype=torch.long))
        out, state = self.gru(
            torch.cat([self._prefix(emb), bos], dim=1), self._state(emb).contiguous()
        )
        return functional.log_softmax(self.head(out[:, -1]), dim=-1), state

    def step(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities of the next word (B, V) after ``tokens`` (B,)."""
        out, state = self.gru(self.embed(tokens[:, None]), state)
        return functional.log_softmax(self.head(out[:, -1]), dim=-1), state


@dataclass
class Captioner:
    """A trained decoder with its vocabulary; :meth:`generate` writes captions for embeddings."""

    decoder: CaptionDecoder
    vocab: Vocabulary
    cfg: CaptionConfig
    train_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch

    @torch.no_grad()
    def generate(
        self, emb: Tensor, *, method: str | None = None, batch_size: int = 512
    ) -> list[str]:
        """Captions for the rows of ``emb`` (n, d) by ``method`` ("greedy"/"beam", default cfg)."""
        method = method or self.cfg.decode
        if method not in ("greedy", "beam"):
            raise ValueError(f"method must be 'greedy' or 'beam', got {method!r}")
        emb = as_matrix("emb", emb, dim=self.decoder.mapper[0].in_features)
        self.decoder.eval()
        run = self._greedy if method == "greedy" else self._beam
        out: list[str] = []
        with _torch_threads(self.cfg.threads):
            for s in range(0, emb.shape[0], batch_size):
                out += [self.vocab.decode(ids) for ids in run(emb[s : s + batch_size]).tolist()]
        return out

    def _greedy(self, emb: Tensor) -> Tensor:
        logp, state = self.decoder.start(emb)
        seqs = []
        done = torch.zeros(emb.shape[0], dtype=torch.bool)
        for _ in range(self.cfg.max_len + 1):
            tok = logp.argmax(-1).masked_fill(done, PAD)
            seqs.append(tok)
            done |= tok == EOS
            if done.all():
                break
            logp, state = self.decoder.step(tok, state)
        return torch.stack(seqs, 1)

    def _beam(self, emb: Tensor) -> Tensor:
        b, k = emb.shape[0], self.cfg.beam_size
        logp, state = self.decoder.start(emb)  # (B, V)
        v = logp.shape[1]
        k = min(k, v)
        score, tok = logp.topk(k, dim=1)  # (B, k)
        seqs = tok[:, :, None]
        state = state.repeat_interleave(k, dim=1)
        finished = tok == EOS
        for _ in range(self.cfg.max_len):
            if finished.all():
                break
            logp, state = self.decoder.step(seqs[:, :, -1].reshape(-1), state)
            logp = logp.view(b, k, v)
            # a finished beam keeps its score and only extends with <pad>
            frozen = torch.full_like(logp, -torch.inf)
            frozen[..., PAD] = 0.0
            logp = torch.where(finished[..., None], frozen, logp)
            score, flat = (score[..., None] + logp).view(b, k * v).topk(k, dim=1)
            origin, tok = flat // v, flat % v
            seqs = torch.cat([seqs.gather(1, origin[..., None].expand_as(seqs)), tok[..., None]], 2)
            finished = finished.gather(1, origin) | (tok == EOS)
            rows = (origin + torch.arange(b)[:, None] * k).reshape(-1)
            state = state[:, rows]
        length = ((seqs != PAD) & (seqs != EOS)).sum(-1).clamp_min(1).float()
        best = (score / length**self.cfg.length_penalty).argmax(1)
        return seqs[torch.arange(b), best]


def train_captioner(
    text: Tensor,
    captions: Sequence[str],
    cfg: CaptionConfig | None = None,
    *,
    progress: bool = False,
) -> Captioner:
    """Train the decoder on (text embedding, caption) pairs; deterministic given ``cfg.seed``."""
    cfg = cfg or CaptionConfig()
    text = as_matrix("text", text)
    if len(captions) != text.shape[0]:
        raise ValueError(f"captions has {len(captions)} entries, text has {text.shape[0]} rows")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    keep = torch.randperm(text.shape[0], generator=gen)[: cfg.max_captions].sort().values
    text = text[keep]
    caps = [captions[i] for i in keep.tolist()]
    vocab = Vocabulary.build(caps, cfg.min_count)
    if len(vocab) <= len(_SPECIALS):
        raise ValueError("the training captions contain no words")
    seqs = [torch.tensor(vocab.encode(c, cfg.max_len)) for c in caps]
    tokens = nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=PAD)
    with torch.random.fork_rng(devices=[]), _torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        decoder = CaptionDecoder(text.shape[1], len(vocab), cfg)
        opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * math.ceil(len(caps) / cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps, pct_start=0.1)
        losses = []
        decoder.train()
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(caps), generator=gen)
            total, count = 0.0, 0
            for s in range(0, len(caps), cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                batch = tokens[idx]
                batch = batch[:, : int((batch != PAD).sum(1).max())]
                emb = text[idx]
                if cfg.noise_std > 0:
                    emb = emb + cfg.noise_std * torch.randn(emb.shape, generator=gen)
                logits = decoder(emb, batch[:, :-1])
                loss = functional.cross_entropy(
                    logits.flatten(0, 1), batch[:, 1:].flatten(), ignore_index=PAD
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
                opt.step()
                sched.step()
                total, count = total + loss.item() * len(idx), count + len(idx)
            losses.append(total / count)
            if progress:
                print(
                    f"  decoder epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.3f} "
                    f"({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
    decoder.eval()
    return Captioner(decoder, vocab, cfg, time.perf_counter() - t0, losses)


def references(captions: Sequence[str], text_to_image: Tensor, n_images: int) -> list[list[str]]:
    """All reference captions of each image: ``refs[i] = [captions[j] for j with t(j) = i]``."""
    t2i = as_index("text_to_image", text_to_image, length=len(captions), upper=n_images)
    refs: list[list[str]] = [[] for _ in range(n_images)]
    for cap, i in zip(captions, t2i.tolist(), strict=True):
        refs[i].append(cap)
    return refs


def caption_metrics(hypotheses: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus CIDEr(-D), BLEU-4 and ROUGE-L of ``hypotheses[i]`` against ``refs[i]``.

    Both sides are tokenised by :func:`tokenize`; images without references are skipped.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(hypotheses) != len(refs):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(refs)} reference lists")
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs) if rs}
    if not gts:
        raise ValueError("no image has a reference caption")
    # an empty hypothesis breaks BLEU's length ratio; score it as an unknown word instead
    res = {i: [" ".join(tokenize(hypotheses[i])) or "<unk>"] for i in gts}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length ratios
        bleu, _ = Bleu(4).compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    return {"cider": float(cider), "bleu4": float(bleu[3]), "rougeL": float(rouge)}
