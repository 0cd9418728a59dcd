"""open_clip models for cma: creation by name, the embedded-world base model, embeddings.

Importing this package registers our small architectures (``cma-tiny``, ``cma-micro``; json files
in ``configs/``) with open_clip, so ``open_clip.create_model("cma-tiny")`` works too.
"""

from pathlib import Path

import open_clip

open_clip.add_model_config(Path(__file__).parent / "configs")

from cma.data.world import ZEROSHOT_TEMPLATES  # noqa: E402
from cma.models.embed import (  # noqa: E402
    class_embeddings,
    default_cache_dir,
    embed_dataset,
    encode_texts,
    fingerprint,
)
from cma.models.factory import (  # noqa: E402
    PretrainedUnavailableError,
    create_model,
    list_models,
    load_weights,
    model_config,
)
from cma.models.pretraining import (  # noqa: E402
    PretrainConfig,
    base_model,
    base_model_path,
    pretrain,
    save_checkpoint,
)

__all__ = [
    "ZEROSHOT_TEMPLATES",
    "PretrainConfig",
    "PretrainedUnavailableError",
    "base_model",
    "base_model_path",
    "class_embeddings",
    "create_model",
    "default_cache_dir",
    "embed_dataset",
    "encode_texts",
    "fingerprint",
    "list_models",
    "load_weights",
    "model_config",
    "pretrain",
    "save_checkpoint",
]
