"""Shared fixtures: tiny random-weight CLIP teachers and folders in the formats real weights ship in."""

from __future__ import annotations

import json
import os

import pytest
import torch

# Tests never reach for the network: missing weights must fail fast with a clear error.
os.environ.setdefault("VLKD_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = "vlkd-tiny-vit"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: the test models are tiny, and on a small shared CPU OpenMP's
    spinning threads make their operations far slower than a single thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_teacher():
    from vlkd import create_teacher

    torch.manual_seed(0)
    return create_teacher(TINY)


def write_hf_clip_tokenizer(folder) -> None:
    """Write CLIP's BPE vocabulary (as bundled with open_clip) in Hugging Face's tokenizer format."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(token, token): index for token, index in simple.encoder.items()}
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)


@pytest.fixture(scope="session")
def hf_clip_folder(tmp_path_factory):
    """A tiny random CLIPModel saved with ``save_pretrained``, with a real CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("hf_clip")
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 77, "vocab_size": 49408},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    write_hf_clip_tokenizer(folder)
    return folder
