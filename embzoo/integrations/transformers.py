"""transformers integration: `import embzoo` registers the embzoo folder type (what `embzoo convert` writes) with
AutoConfig and AutoModel, so AutoModel.from_pretrained(folder) returns an EmbzooModel: a PreTrainedModel around
what embzoo.load returns, taking padded input_ids / attention_mask as transformers models do.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from embzoo.conversion.snapshot import CONVERTED_TYPE
from embzoo.modeling.batch import PackedBatch
from embzoo.reranker import Reranker


class EmbzooConfig(PretrainedConfig):
    """config.json of an embzoo folder; `embzoo` holds the source config, ArchConfig, recipe and dtype."""

    model_type = CONVERTED_TYPE

    def __init__(self, embzoo: dict[str, Any] | None = None, **kwargs: Any):
        self.embzoo = dict(embzoo or {})
        super().__init__(**kwargs)


class EmbzooModel(PreTrainedModel):
    """An embzoo model behind transformers' interface. forward(input_ids [B, S], attention_mask [B, S] right- or
    left-padded, token_type_ids) → an embedder's BaseModelOutputWithPooling (last_hidden_state [B, S, D] float32 in
    the input's layout, zeros at the padding; pooler_output: the sentence vectors [B, dim] before normalization,
    None without a pooler), or a reranker's SequenceClassifierOutput (logits [B, 1]). `embzoo` is the Embedder or
    Ranker itself (encode, rank)."""

    config_class = EmbzooConfig
    base_model_prefix = "module"

    def __init__(self, config: EmbzooConfig, loaded: Any = None):
        super().__init__(config)
        if loaded is None:
            raise ValueError("an EmbzooModel wraps a loaded embzoo model: use EmbzooModel.from_pretrained(folder)")
        self.embzoo = loaded
        self.module = loaded.model if hasattr(loaded, "model") else loaded.scorer

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: Any, *args: Any, config: EmbzooConfig | None = None, **kwargs: Any
    ) -> EmbzooModel:
        """embzoo.load(folder) wrapped: dtype (or torch_dtype; "auto" = embzoo's default), device (or a device_map
        naming one device), revision and attn_backend are passed on; options that would change the model
        (REFUSED_OPTIONS) raise TypeError, the Hub and cache options transformers adds are not needed."""
        from embzoo.loading import load

        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        device_map = kwargs.pop("device_map", None)
        if isinstance(device_map, dict) and set(device_map) == {""}:  # the whole model on one device
            device_map = device_map[""]
        refused = sorted(k for k in REFUSED_OPTIONS if kwargs.get(k) not in (None, False))
        if args or refused or not (device_map is None or isinstance(device_map, str | int | torch.device)):
            raise TypeError(
                f"EmbzooModel.from_pretrained takes dtype, device (or one device as device_map), revision and "
                f"attn_backend; it cannot apply {refused or args or 'a multi-device device_map'} (Hub access: set "
                "HF_TOKEN / HF_HOME, or pass a local folder)"
            )
        options = {k: kwargs[k] for k in ("device", "revision", "attn_backend") if kwargs.get(k) is not None}
        if device_map not in (None, "auto"):
            options.setdefault("device", f"cuda:{device_map}" if isinstance(device_map, int) else device_map)
        config = config or EmbzooConfig.from_pretrained(pretrained_model_name_or_path)
        if dtype == "auto":  # transformers' meaning: the dtype the folder was written in
            dtype = config.embzoo.get("dtype")
        loaded = load(str(pretrained_model_name_or_path), dtype=dtype, **options)
        return cls(config, loaded)

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> None:
        """Copy the embzoo folder this model was loaded from (EmbzooModel runs inference only, so its weights are the
        folder's) to save_directory; other sources are written by `embzoo convert`."""
        origin = self.embzoo.origin.snapshot
        if origin.converted is None:
            raise ValueError(
                f"{origin.root} is not an embzoo folder; write one with `embzoo convert {origin.root} DST` instead"
            )
        shutil.copytree(origin.root, save_directory, dirs_exist_ok=True)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> BaseModelOutputWithPooling | SequenceClassifierOutput:
        if not hasattr(self.embzoo, "model") and not isinstance(self.embzoo, Reranker):
            raise TypeError(
                f"{type(self.embzoo).__name__} scores a query with a list of documents in one prompt, not padded "
                "token ids: call model.embzoo.rank(query, documents)"
            )
        device = next(self.module.parameters()).device
        input_ids = input_ids.to(device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        types = None if token_type_ids is None else token_type_ids.to(device)
        batch = PackedBatch.from_padded(input_ids, mask, types)
        with torch.inference_mode():
            if not hasattr(self.embzoo, "model"):
                return SequenceClassifierOutput(logits=self.module(batch).float()[:, None])
            want = ["tokens", *(["sentence"] if self.module.pooler is not None else [])]
            out = self.module.run(batch, want)
        tokens = out["tokens"]  # [T, D] in the mask's row-major order: back to the input's layout, left or right padded
        hidden = tokens.new_zeros(*mask.shape, tokens.shape[1]).masked_scatter_(mask.bool()[..., None], tokens)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=out.get("sentence"))


# transformers' from_pretrained options embzoo.load cannot honour: quantization (it has its own load_in_8bit …),
# attention and outputs of transformers' classes, and Hub / cache options (resolve() uses huggingface_hub's defaults)
REFUSED_OPTIONS = (
    "quantization_config",
    "load_in_8bit",
    "load_in_4bit",
    "attn_implementation",
    "output_hidden_states",
    "output_attentions",
    "subfolder",
    "cache_dir",
    "token",
    "local_files_only",
    "force_download",
)

AutoConfig.register(CONVERTED_TYPE, EmbzooConfig, exist_ok=True)
AutoModel.register(EmbzooConfig, EmbzooModel, exist_ok=True)
