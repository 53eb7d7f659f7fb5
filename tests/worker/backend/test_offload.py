"""--n-gpu-layers auto: sizing a model against free GPU memory."""

from __future__ import annotations

from llorch.worker.backend import offload
from llorch.worker.backend.offload import COMPUTE_RESERVE_BYTES, ModelFootprint

MiB = 1 << 20
MODEL = ModelFootprint(
    layer_bytes=(100 * MiB,) * 10,
    other_bytes=300 * MiB,
    kv_bytes_per_token_per_layer=1024,
    n_ctx_train=4096,
)


def test_everything_fits_when_memory_is_plenty():
    assert offload.fit_layers(MODEL, 64 << 30, 4096) == 11  # 10 blocks + the output layer


def test_partial_offload_counts_weights_and_kv_of_each_layer():
    kv = 1024 * 4096  # 4 MiB per layer at this context
    free = COMPUTE_RESERVE_BYTES + 3 * (100 * MiB + kv) + MiB
    assert offload.fit_layers(MODEL, free, 4096) == 3
    # The same memory with a 16x longer context holds fewer layers.
    assert offload.fit_layers(MODEL, free, 65536) == 1  # 164 MiB a layer now


def test_nothing_fits_below_the_compute_reserve():
    assert offload.fit_layers(MODEL, COMPUTE_RESERVE_BYTES, 4096) == 0


def test_all_blocks_but_not_the_output_layer():
    kv = 1024 * 4096
    free = COMPUTE_RESERVE_BYTES + 10 * (100 * MiB + kv) + 100 * MiB
    assert offload.fit_layers(MODEL, free, 4096) == 10


def test_footprint_of_the_default_model(model_path):
    model = offload.footprint(model_path)
    assert len(model.layer_bytes) == 18  # Gemma 3 270M
    assert sum(model.layer_bytes) + model.other_bytes <= model_path.stat().st_size
    assert sum(model.layer_bytes) + model.other_bytes > 0.9 * model_path.stat().st_size
    # 1 KV head of 256 (keys) + 256 (values), F16.
    assert model.kv_bytes_per_token_per_layer == 1 * (256 + 256) * 2
    assert model.n_ctx_train == 32768


def test_auto_without_a_gpu_offloads_nothing(model_path):
    from llorch.worker.backend.llama import LlamaCppBackend
    from llorch.worker.backend.protocol import LoadOptions

    backend = LlamaCppBackend()
    try:
        info = backend.load(model_path, LoadOptions(ctx_size=256, n_gpu_layers="auto"))
        assert info.n_gpu_layers == 0
    finally:
        backend.close()
