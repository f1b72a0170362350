"""Adapters that give open_clip and Hugging Face CLIP models one small interface.

:class:`~vlkd.teacher.clip.FrozenCLIP` only needs four things from a CLIP model:
tokenise text, embed normalised pixels, embed tokens, and the learned logit
scale. Each adapter wraps one library's model and answers exactly those, so the
teacher's own logic (normalisation, caching, chunking, precision) is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: OpenAI CLIP's pixel statistics, the default when weights do not say otherwise.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """The pixel pipeline the weights were trained with: square size, mean and std."""

    image_size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"


class CLIPAdapter(nn.Module):
    """Interface of a wrapped CLIP model. Inputs are already normalised pixels / token ids."""

    preprocess: PreprocessConfig

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised pixels -> (B, D) unnormalised embeddings."""
        raise NotImplementedError

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, D) unnormalised embeddings."""
        raise NotImplementedError

    def logit_scale(self) -> torch.Tensor:
        """The learned temperature, already exponentiated (100 for OpenAI's weights)."""
        raise NotImplementedError

    @property
    def embed_dim(self) -> int:
        raise NotImplementedError


class OpenCLIPAdapter(CLIPAdapter):
    """An ``open_clip.CLIP`` model and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, preprocess: PreprocessConfig):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if self.model.text_projection is not None else int(
            self.model.visual.output_dim
        )


def _pooled(output) -> torch.Tensor:
    # transformers 4.x returns the projected tensor; 5.x returns a model output
    # whose pooler_output holds the projected embedding.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFCLIPAdapter(CLIPAdapter):
    """A ``transformers.CLIPModel`` and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, preprocess: PreprocessConfig):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.context_length = int(model.config.text_config.max_position_embeddings)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        encoded = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return encoded["input_ids"]

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        # No attention mask: CLIP's text tower is causal and pools at the end-of-text
        # token, so the padding after it cannot change the pooled embedding.
        return _pooled(self.model.get_text_features(input_ids=tokens))

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)
