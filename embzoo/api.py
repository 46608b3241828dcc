"""Embedder.encode: prompts, tokenization, token-budget packing, batching, output formats."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from embzoo.catalog import INSTRUCTION_MASKS
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.embedding_model import EmbeddingModel
from embzoo.modeling.named_lora import NamedLoRA
from embzoo.packing import token_budget_batches
from embzoo.quantization import PRECISIONS, calibration_ranges, quantize
from embzoo.tokenization import TextTokenizer

OUTPUTS = ("sentence", "tokens")
PROGRESS_MIN_TEXTS = 1024  # show_progress_bar=None shows a bar from this many texts on
TOKENIZE_CHUNK = 4096  # texts tokenized at once; the device works on one chunk while the next is tokenized


def _as_texts(sentences: str | Sequence[str]) -> tuple[list[str], bool]:
    if isinstance(sentences, str):
        return [sentences], True
    texts = list(sentences)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"encode expects str or a list of str; item {i} is {type(t).__name__}: {t!r:.60}")
    return texts, False


class Embedder:
    """Text → vectors with one embedding checkpoint (load it with `embzoo.load`)."""

    def __init__(
        self,
        model: EmbeddingModel,
        tokenizer: TextTokenizer,
        *,
        normalize: bool = False,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        int8_ranges: np.ndarray | None = None,
        matryoshka_layer_norm: bool = False,
        instruction_template: str = "",
        instruction_mask: str = "prompt",
        text_suffix: str = "",
        task_instructions: dict[str, str] | None = None,
        name: str = "",
        adapters: NamedLoRA | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.prompts = dict(prompts or {})
        if default_prompt_name is not None and default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name {default_prompt_name!r} is not among prompts {self.prompts}")
        self.default_prompt_name = default_prompt_name
        self.int8_ranges = int8_ranges
        self.matryoshka_layer_norm = matryoshka_layer_norm
        if instruction_template and "{instruction}" not in instruction_template:
            raise ValueError(f"instruction_template {instruction_template!r} lacks the {{instruction}} placeholder")
        self.instruction_template = instruction_template
        if instruction_mask not in INSTRUCTION_MASKS:
            raise ValueError(f"instruction_mask {instruction_mask!r}; allowed: {INSTRUCTION_MASKS}")
        self.instruction_mask = instruction_mask
        self.text_suffix = text_suffix
        self.task_instructions = dict(task_instructions or {})
        self.name = name
        self.adapters = adapters

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dimension(self) -> int:
        """Length of the full sentence vector."""
        return self.model.dimension

    @property
    def max_seq_length(self) -> int:
        """Inputs are truncated to this many tokens (special tokens included)."""
        return self.tokenizer.max_length

    def __repr__(self) -> str:
        return (
            f"Embedder({self.name!r}, dimension={self.dimension}, max_seq_length={self.max_seq_length}, "
            f"pooling={self.model.pooler.name!r}, normalize={self.normalize}, device={self.device})"
        )

    def _prompt(self, prompt_name: str | None, prompt: str | None, instruction: str | None) -> str:
        if sum(x is not None for x in (prompt_name, prompt, instruction)) > 1:
            raise ValueError("pass at most one of prompt, prompt_name and instruction")
        if instruction is not None:
            if not self.instruction_template:
                raise ValueError(
                    f"{self.name or 'this model'} takes no instruction (it has no instruction template); "
                    "pass prompt=... or prompt_name=... instead"
                )
            return self.instruction_template.format(instruction=instruction)
        if prompt is not None:
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            raise ValueError(
                f"unknown prompt_name {name!r}; this model's prompts are {sorted(self.prompts)} "
                "(or pass the text itself with prompt=...)"
            )
        return self.prompts[name]

    def encode(
        self,
        sentences: str | Sequence[str],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        instruction: str | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        precision: str = "float32",
        int8_ranges: np.ndarray | None = None,
        batch_tokens: int | None = None,
        output: str = "sentence",
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
        task: str | Sequence[str] | None = None,
        adapter: str | Sequence[str | None] | None = None,
    ) -> Any:
        """Embed texts. Returns float32 [N, D] (or [D] for one str) as numpy, or a torch tensor on the
        model's device with convert_to_tensor; precision int8/uint8/binary/ubinary changes the dtype.
        output="tokens" gives per-text [len_i, hidden] token states instead (a list; one for one str).

        The text is prefixed by `prompt`, the model's prompt `prompt_name`, or `instruction` (a task
        description put into the model's instruction template, e.g. Qwen3-Embedding's
        "Instruct: {instruction}\nQuery:"); with none of them, the default prompt if the model has one.

        dimensions truncates (Matryoshka) before normalizing; normalize=None follows the model's
        Normalize module. int8/uint8 use int8_ranges ([2, D] min/max) or the stored ones (calibrate).
        batch_tokens: tokens per packed batch (None: 16384 on CUDA, 4096 elsewhere).

        task (task-LoRA models, jina-embeddings-v3): a task name, or one per text; each text runs with its task's
        adapter and is prefixed by its task's instruction (then pass no prompt). No task: the base weights, no
        instruction. A single-task call merges the adapter into the weights when memory allows (see
        embzoo.modeling.task_lora); mixed tasks run grouped by task, the adapter added per batch.

        adapter (a model loaded with adapters={name: folder}): an adapter name, or one per text (None in a list:
        the base weights); texts run grouped by adapter, its LoRA added per batch. No adapter: the base weights.
        """
        texts, single = _as_texts(sentences)
        tasks = self._tasks(task, len(texts), (prompt_name, prompt, instruction))
        adapters = self._adapters(adapter, len(texts))
        prefix = "" if tasks is not None else self._prompt(prompt_name, prompt, instruction)
        self._check_output_args(output, dimensions, precision)
        normalize = self.normalize if normalize is None else normalize
        if batch_tokens is None:
            batch_tokens = 16384 if self.device.type == "cuda" else 4096
        show = len(texts) >= PROGRESS_MIN_TEXTS if show_progress_bar is None else show_progress_bar
        if output == "tokens":
            states = self._run_groups(texts, tasks, adapters, prefix, batch_tokens, show, tokens=True)
            states = states if convert_to_tensor else [s.cpu().numpy() for s in states]
            return states[0] if single else states
        vectors = self._run_groups(texts, tasks, adapters, prefix, batch_tokens, show, tokens=False)
        if dimensions is not None:
            if self.matryoshka_layer_norm:  # nomic-embed v1.5's recipe: layer norm, truncate, normalize
                vectors = F.layer_norm(vectors, (vectors.shape[-1],))
            vectors = vectors[:, :dimensions]
        if normalize:
            vectors = F.normalize(vectors, p=2, dim=-1)
        if precision != "float32":
            ranges = int8_ranges if int8_ranges is not None else self.int8_ranges
            vectors = quantize(vectors.cpu().numpy(), precision, ranges)
            vectors = torch.from_numpy(vectors).to(self.device) if convert_to_tensor else vectors
        elif not convert_to_tensor:
            vectors = vectors.cpu().numpy()
        return vectors[0] if single else vectors

    def _tasks(self, task: str | Sequence[str] | None, count: int, prompts: tuple) -> list[str] | None:
        """One task name per text (None without a task), checked against the model's adapters."""
        if task is None:
            return None
        lora = self.model.backbone.task_lora
        if lora is None:
            raise ValueError(f"{self.name or 'this model'} has no task adapters; call encode without task=")
        if any(p is not None for p in prompts):
            raise ValueError("task= sets the prompt (its instruction); pass no prompt, prompt_name or instruction")
        tasks = [task] * count if isinstance(task, str) else list(task)
        if len(tasks) != count:
            raise ValueError(f"task= has {len(tasks)} names for {count} texts; pass one task, or one per text")
        for name in dict.fromkeys(tasks):
            lora.index(name)
        return tasks

    def _adapters(self, adapter: str | Sequence[str | None] | None, count: int) -> list[str | None] | None:
        """One adapter name (or None: base weights) per text, None without adapter=; checked against the loaded
        adapters."""
        if adapter is None:
            return None
        if self.adapters is None:
            raise ValueError(
                f"{self.name or 'this model'} has no named adapters; load it with adapters={{name: folder}} to "
                "select one per call"
            )
        names = [adapter] * count if isinstance(adapter, str) else list(adapter)
        if len(names) != count:
            raise ValueError(f"adapter= has {len(names)} names for {count} texts; pass one adapter, or one per text")
        for name in dict.fromkeys(names):
            if name is not None:
                self.adapters.check(name)
        return names

    def merge_adapter(self, name: str) -> None:
        """Merge the named adapter into the weights for good: it becomes the base weights every later call
        (with or without another adapter) runs on, and is no longer selectable."""
        if self.adapters is None:
            raise ValueError(f"{self.name or 'this model'} has no named adapters to merge")
        self.adapters.merge(name)

    @contextmanager
    def _weights(self, task: str | None, adapter: str | None, alone: bool) -> Iterator[None]:
        """Run with task's adapter (merged into the weights when `alone` and memory allows) and the named
        adapter (added per batch); None: neither."""
        with ExitStack() as stack:
            if task is not None:
                lora = self.model.backbone.task_lora
                stack.enter_context(lora.merged(task) if alone and lora.can_merge() else lora.active(task))
            if adapter is not None:
                stack.enter_context(self.adapters.active(adapter))
            yield

    def _run_groups(
        self,
        texts: list[str],
        tasks: list[str] | None,
        adapters: list[str | None] | None,
        prefix: str,
        batch_tokens: int,
        show: bool,
        tokens: bool,
    ) -> torch.Tensor | list[torch.Tensor]:
        """_run, with each text's task adapter and instruction and its named adapter: texts grouped by (task,
        adapter), one group at a time, results in the caller's order."""
        args = batch_tokens, show, tokens
        keys = zip(tasks or [None] * len(texts), adapters or [None] * len(texts), strict=True)
        groups: dict[tuple[str | None, str | None], list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        if len(groups) <= 1:  # no reordering: the whole call in one run
            task, adapter = next(iter(groups), (None, None))
            with self._weights(task, adapter, alone=True):
                return self._run(texts, prefix if task is None else self.task_instructions.get(task, ""), *args)
        results: list[Any] = [None] * len(texts)
        for (task, adapter), idx in groups.items():
            with self._weights(task, adapter, alone=False):
                instruction = prefix if task is None else self.task_instructions.get(task, "")
                out = self._run([texts[i] for i in idx], instruction, *args)
            for i, row in zip(idx, out, strict=True):
                results[i] = row
        return results if tokens else torch.stack(results)

    def _check_output_args(self, output: str, dimensions: int | None, precision: str) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; allowed: {OUTPUTS}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; allowed: {PRECISIONS}")
        if output == "tokens" and (dimensions is not None or precision != "float32"):
            raise ValueError("dimensions and precision apply to output='sentence' only")
        if dimensions is not None and not 1 <= dimensions <= self.dimension:
            raise ValueError(f"dimensions must be in 1..{self.dimension}, got {dimensions}")

    def _pool_skips(self, texts: list[str], prefix: str, ids: list[list[int]]) -> np.ndarray | None:
        """Leading tokens of each sequence kept out of the pool (see catalog.CatalogEntry.instruction_mask),
        or None when every token is pooled. "text_tokens" applies with or without a prompt (a leading BOS
        is not a text token)."""
        if self.model.pooler.include_prompt:
            return None
        if self.instruction_mask == "text_tokens":
            counts = np.asarray(self.tokenizer.token_counts([t + self.text_suffix for t in texts]))
            return np.maximum(np.asarray([len(s) for s in ids]) - counts, 0)
        if not prefix:
            return None
        if self.instruction_mask == "prompt_tokens":
            skip = self.tokenizer.token_counts([prefix])[0]
        else:
            skip = self.tokenizer.prompt_length(prefix)
        return np.full(len(ids), skip)

    @torch.inference_mode()
    def _run(
        self, texts: list[str], prefix: str, batch_tokens: int, show: bool, tokens: bool
    ) -> torch.Tensor | list[torch.Tensor]:
        """Tokenize prefix + text + text_suffix chunk by chunk; forward each chunk in length-sorted token-budget
        batches.

        GPU work is queued asynchronously, so the next chunk is tokenized while the device computes;
        the only host sync is the final reorder into the caller's order.
        """
        device = self.device
        outputs: list[torch.Tensor] = []
        order: list[np.ndarray] = []
        truncated = 0
        with tqdm(total=len(texts), disable=not show, desc="embzoo encode", unit="text") as bar:
            for start in range(0, len(texts), TOKENIZE_CHUNK):
                chunk = texts[start : start + TOKENIZE_CHUNK]
                ids, cut = self.tokenizer.encode([prefix + t + self.text_suffix for t in chunk])
                skips = self._pool_skips(chunk, prefix, ids)
                truncated += cut
                for idx in token_budget_batches([len(s) for s in ids], batch_tokens):
                    batch_skips = None if skips is None else skips[idx]
                    outputs.extend(self._forward([ids[i] for i in idx], tokens, batch_skips))
                    order.append(idx + start)
                    bar.update(len(idx))
        self.tokenizer.warn_truncated(truncated, len(texts))
        if not texts:
            return [] if tokens else torch.zeros(0, self.dimension, device=device)
        positions = torch.from_numpy(np.concatenate(order))
        if tokens:
            restored: list[torch.Tensor] = [None] * len(texts)  # type: ignore[list-item]
            for pos, state in zip(positions.tolist(), outputs, strict=True):
                restored[pos] = state
            return restored
        stacked = torch.cat(outputs)
        result = torch.empty_like(stacked)
        result[positions.to(device)] = stacked
        return result

    def _forward(self, ids: list[list[int]], tokens: bool, skips: np.ndarray | None) -> list[torch.Tensor]:
        """One packed batch → per-text token states [len_i, hidden], or one [B, D] block of vectors;
        skips [B]: leading tokens per sequence kept out of the pool."""
        batch = PackedBatch.from_sequences(ids).to(self.device)
        if tokens:
            return list(self.model.backbone(batch).float().split([len(s) for s in ids]))
        prompt_lengths = None
        if skips is not None:
            prompt_lengths = torch.from_numpy(skips.astype(np.int32)).to(self.device)
        return [self.model(batch, prompt_lengths)]

    def calibrate(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        instruction: str | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        batch_tokens: int | None = None,
    ) -> np.ndarray:
        """Compute and store int8/uint8 ranges ([2, D] min/max) from representative texts, encoded with
        the same prompt/dimensions/normalize arguments you will use for quantized encoding."""
        vectors = self.encode(
            list(texts),
            prompt_name=prompt_name,
            prompt=prompt,
            instruction=instruction,
            normalize=normalize,
            dimensions=dimensions,
            batch_tokens=batch_tokens,
        )
        self.int8_ranges = calibration_ranges(vectors)
        return self.int8_ranges
