"""``python -m cma.eval``: evaluate one model (and optionally the post-hoc baselines).

Examples::

    python -m cma.eval --output runs/eval_base --baselines          # the embedded base model
    python -m cma.eval --model cma-tiny --pretrained ckpt.pt --output runs/eval_ckpt
    python -m cma.eval --dataset-type coco --train-data COCO --val-data COCO --model ViT-B-32 \\
        --pretrained openai --output runs/coco
    python -m cma.eval --embeddings test.npz --train-embeddings train.npz --output runs/npz
    python -m cma.eval --model ViT-B-32 --pretrained openai --dataset-type csv \
        --val-data val.csv --csv-label-key class --output runs/csv      # labelled CSV
    python -m cma.eval --model ViT-B-32 --pretrained openai --dataset-type coco --val-data COCO \
        --zeroshot-data imagenette/val --classnames names.txt --output runs/zs

Writes ``metrics.json`` (the METRICS of SPEC section 6 at top level, plus ``baselines``,
``gap_reduction``, ``gap_task_r2`` and details), ``report.md`` and PNG plots into ``--output``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from cma.eval import baselines as bl
from cma.eval.analysis import gap_task_r2
from cma.eval.captioning import CaptionConfig
from cma.eval.report import format_table, write_run_report
from cma.eval.suite import evaluate_detailed, gap_reduction

DATASET_TYPES = ("embedded", "csv", "coco", "imagefolder")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m cma.eval",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("what to evaluate")
    src.add_argument("--model", help="architecture name (default: the embedded-world base model)")
    src.add_argument("--pretrained", help="open_clip tag or checkpoint path for --model")
    src.add_argument("--dataset-type", choices=DATASET_TYPES, default="embedded")
    src.add_argument("--train-data", help="training data path (decoder captions), real formats")
    src.add_argument("--val-data", help="evaluation data path, real formats")
    src.add_argument(
        "--train-size",
        type=int,
        help="embedded world: training images (default: "
        "the world's default); the decoder uses at most --decoder-captions of them",
    )
    src.add_argument("--test-size", type=int, help="embedded world: test images")
    src.add_argument("--csv-separator", default="\t")
    src.add_argument("--csv-img-key", default="filepath")
    src.add_argument("--csv-caption-key", default="title")
    src.add_argument("--csv-label-key", help="CSV column of class names or ids (zero-shot, ARI)")
    src.add_argument(
        "--zeroshot-data",
        help="class-labelled image folder (root/<class>/<image>) "
        "for zero-shot accuracy and ARI, with any --dataset-type",
    )
    src.add_argument(
        "--classnames",
        help="class names of the labelled set (the zero-shot folder, "
        "else the CSV labels): a file (one per line, or JSON) or 'a,b,c'",
    )
    src.add_argument(
        "--zeroshot-templates",
        nargs="+",
        help="prompt templates with '{}' (or one "
        "file, a template per line); default: 'a photo of a {}.' and 5 more",
    )
    src.add_argument("--embeddings", help="evaluate this EmbeddingSet .npz instead of a model")
    src.add_argument(
        "--train-embeddings",
        help="training EmbeddingSet .npz for the decoder "
        "(with --embeddings; without it captioning is skipped)",
    )
    ev = p.add_argument_group("evaluation")
    ev.add_argument(
        "--baselines",
        action="store_true",
        help=f"also evaluate the post-hoc baselines {', '.join(bl.BASELINES)}",
    )
    ev.add_argument("--blur", type=float, default=0.05, help="Sinkhorn blur of the gap metrics")
    ev.add_argument("--ari-seeds", type=int, default=5)
    ev.add_argument("--no-captioning", action="store_true")
    ev.add_argument("--decode", choices=("greedy", "beam"), default=CaptionConfig.decode)
    ev.add_argument("--decoder-epochs", type=int, default=CaptionConfig.epochs)
    ev.add_argument("--decoder-captions", type=int, default=CaptionConfig.max_captions)
    ev.add_argument(
        "--capdec-noise",
        type=float,
        default=0.0,
        help="CapDec: std of Gaussian noise on the decoder's training embeddings",
    )
    ev.add_argument("--seed", type=int, default=0)
    run = p.add_argument_group("running")
    run.add_argument("--output", required=True, help="output folder")
    run.add_argument("--device", default="cpu")
    run.add_argument("--batch-size", type=int, default=256, help="embedding batch size")
    run.add_argument(
        "--cache-dir", help="model/embedding cache (default $CMA_CACHE or ~/.cache/cma)"
    )
    run.add_argument(
        "--name",
        help="label of the evaluated model in the report (default: --model, "
        "'base' or 'embeddings')",
    )
    run.add_argument("--quiet", action="store_true")
    return p


def _embed_sets(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(train, test, zero-shot) EmbeddingSets and a description of where they came from."""
    from cma.data import (
        EmbeddingSet,
        format_options,
        load_dataset,
        load_zeroshot,
        parse_classnames,
        parse_templates,
    )

    classnames = parse_classnames(args.classnames)
    templates = parse_templates(args.zeroshot_templates)
    if args.embeddings:
        if args.zeroshot_data or args.csv_label_key:
            raise ValueError("--zeroshot-data/--csv-label-key need a model, not --embeddings")
        test = EmbeddingSet.load_npz(args.embeddings)
        train = EmbeddingSet.load_npz(args.train_embeddings) if args.train_embeddings else None
        return (
            train,
            test,
            None,
            {"embeddings": args.embeddings, "train_embeddings": args.train_embeddings},
        )
    if args.train_embeddings:
        raise ValueError("--train-embeddings needs --embeddings")
    from cma.models import base_model, create_model, embed_dataset

    if args.pretrained and not args.model:
        raise ValueError("--pretrained needs --model")
    progress = not args.quiet
    if args.model:
        model, preprocess, tokenizer = create_model(
            args.model, args.pretrained, device=args.device, cache_dir=args.cache_dir
        )
    else:
        model, preprocess, tokenizer = base_model(
            cache_dir=args.cache_dir, device=args.device, progress=progress
        )
    zs_names, zs_templates = (classnames, templates) if args.zeroshot_data else (None, None)
    if args.dataset_type == "embedded":
        if args.train_data or args.val_data:
            raise ValueError("the embedded world takes no --train-data/--val-data")
        if (classnames or templates) and not args.zeroshot_data:
            raise ValueError(
                "--classnames/--zeroshot-templates: the embedded world has its "
                "own; they name the classes of --zeroshot-data or a labelled CSV"
            )
        train_ds = load_dataset("embedded", split="train", **_size(args.train_size))
        test_ds = load_dataset("embedded", split="test", **_size(args.test_size))
    else:
        if not args.val_data:
            raise ValueError(
                f"--dataset-type {args.dataset_type} needs --val-data (and "
                "--train-data for captioning)"
            )
        options = format_options(
            args.dataset_type,
            csv_separator=args.csv_separator,
            csv_img_key=args.csv_img_key,
            csv_caption_key=args.csv_caption_key,
            csv_label_key=args.csv_label_key,
            classnames=None if args.zeroshot_data else classnames,
            templates=None if args.zeroshot_data else templates,
        )
        test_ds = load_dataset(args.dataset_type, args.val_data, split="val", **options)
        train_ds = (
            load_dataset(args.dataset_type, args.train_data, split="train", **options)
            if args.train_data
            else None
        )
    zs_ds = (
        load_zeroshot(args.zeroshot_data, classnames=zs_names, templates=zs_templates)
        if args.zeroshot_data
        else None
    )
    kw = {
        "batch_size": args.batch_size,
        "device": args.device,
        "cache_dir": args.cache_dir,
        "cache_key": "auto",
        "progress": progress,
    }
    test = embed_dataset(model, preprocess, tokenizer, test_ds, **kw)
    train = embed_dataset(model, preprocess, tokenizer, train_ds, **kw) if train_ds else None
    zeroshot = embed_dataset(model, preprocess, tokenizer, zs_ds, **kw) if zs_ds else None
    source = {
        "model": args.model or "base",
        "pretrained": args.pretrained,
        "dataset": args.dataset_type,
        "train_data": args.train_data,
        "val_data": args.val_data,
        "zeroshot_data": args.zeroshot_data,
        "csv_label_key": args.csv_label_key,
    }
    return train, test, zeroshot, source


def _size(n: int | None) -> dict[str, int]:
    return {} if n is None else {"size": n}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as ``args`` say, write the report, return the metrics.json content."""
    t0 = time.perf_counter()
    log = (lambda *_: None) if args.quiet else print
    train, test, zeroshot, source = _embed_sets(args)
    captioning = not args.no_captioning
    if captioning and train is None:
        log("no training set given: captioning skipped (it needs training captions)")
        captioning = False
    cfg = CaptionConfig(
        decode=args.decode,
        epochs=args.decoder_epochs,
        max_captions=args.decoder_captions,
        noise_std=args.capdec_noise,
        seed=args.seed,
    )
    opts = {
        "blur": args.blur,
        "ari_seeds": args.ari_seeds,
        "captioning": captioning,
        "caption_cfg": cfg,
        "seed": args.seed,
        "progress": not args.quiet,
        "zeroshot": zeroshot,
    }
    name = args.name or source.get("model", "embeddings")
    log(f"evaluating {name} on {test.image.shape[0]} images / {test.text.shape[0]} captions")
    main = evaluate_detailed(train, test, **opts)
    out: dict[str, Any] = {
        "model": name,
        **main.metrics,
        "source": source,
        "details": {k: v for k, v in main.details.items() if k != "samples"},
    }
    embeddings = {name: test}
    if args.baselines:
        out["baselines"], out["gap_reduction"], out["baseline_details"] = {}, {}, {}
        # the baselines' means come from the training set, else (npz without one) the test set
        reference = train if train is not None else test
        for b in bl.BASELINES:
            log(f"evaluating post-hoc baseline {b}")
            tr_b, te_b = bl.apply(b, reference, test, seed=args.seed)
            if zeroshot is not None:  # the zero-shot set moves with the test set
                opts["zeroshot"] = bl.apply(b, reference, zeroshot, seed=args.seed)[1]
            res = evaluate_detailed(tr_b, te_b, **opts)
            out["baselines"][b] = res.metrics
            out["gap_reduction"][b] = gap_reduction(main.metrics, res.metrics)
            out["baseline_details"][b] = {k: v for k, v in res.details.items() if k != "samples"}
            embeddings[b] = te_b
        out["gap_task_r2"] = gap_task_r2({name: main.metrics, **out["baselines"]})
    out["seconds"] = round(time.perf_counter() - t0, 2)
    paths = write_run_report(
        args.output, out, embeddings=embeddings, details=main.details, title=f"Evaluation of {name}"
    )
    columns = {name: main.metrics, **out.get("baselines", {})}
    log("\n" + format_table(columns, markdown=False))
    log(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad arguments or inputs)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
