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


def save_checkpoint(method, path, class_path: str | None = None):
    """Write ``method`` (untrained) as the Lightning checkpoint a `vlkd fit` run would, at ``path``.

    ``class_path``: what LightningCLI records in the hyperparameters (``vlkd.methods.FineTuneCLIP``).
    """
    import lightning.pytorch as pl

    if class_path is not None:
        method.hparams.update(_class_path=class_path, _instantiator="lightning.pytorch.cli.instantiate_module")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(method)
    trainer.save_checkpoint(path)
    return path


def write_openai_style_archive(arch: str, path):
    """Save a random ``arch`` CLIP with QuickGELU as a TorchScript archive, the format of OpenAI's
    own CLIP files (ViT-B-16.pt); returns the model (eval mode) whose weights it holds."""
    import warnings

    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(arch, force_quick_gelu=True).eval()
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    inputs = (torch.rand(1, 3, *size), open_clip.get_tokenizer(arch)(["a"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow
        torch.jit.trace(model, inputs, strict=False, check_trace=False).save(str(path))
    return model


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def ray_serve():
    """One Ray instance and one Serve HTTP proxy on loopback, shared by every test that needs them.

    Each start costs seconds, and Ray by default reserves a third of the machine's memory for
    its object store: two CPUs and a small store are enough for the test teachers. Tests deploy
    their own applications under their own route prefixes; yields the proxy's base URL.
    """
    pytest.importorskip("ray.serve", reason="the teacher service tests need vlkd[serve]")
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=2, object_store_memory=128 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def continual_cli_config(tmp_path, name: str, model: str, model_args: dict, data_args: dict, **trainer):
    """A `vlkd fit` config file for a tiny continual run that checkpoints every step (for the kill-and-resume
    tests): ``model`` with the tiny teacher and ``model_args``, a ContinualDataModule with ``data_args``."""
    import yaml

    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / name), "logger": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / name / "checkpoints"), "save_last": True,
                                                 "save_top_k": 0, "every_n_train_steps": 1}}], **trainer},
        "model": {"class_path": model,
                  "init_args": {"teacher": {"name": TINY, "pretrained": None}, "lr": 2e-3, "warmup_steps": 1,
                                **model_args}},
        "data": {"class_path": "ContinualDataModule",
                 "init_args": {"source": "synth", "iterations_per_task": 4, "batch_size": 4, "image_size": 32,
                               "num_workers": 0, "seed": 0, **data_args}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def results_without_cost(path) -> dict:
    """A continual run's results.json without its timings (which differ between runs)."""
    results = json.loads(path.read_text())
    results.pop("cost")
    return results
