"""Provider names, options and the CUDA start check (optimize.runtime.providers)."""

import onnxruntime as ort
import pytest

from optimize.errors import OptimizeError
from optimize.runtime import providers
from optimize.runtime.providers import ProviderOptions

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_provider_options():
    opts = ProviderOptions()
    assert opts.cuda() == {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0", "arena_extend_strategy": "kSameAsRequested"}
    assert ProviderOptions(gpu_mem_limit=2**30, use_tf32=True).cuda()["gpu_mem_limit"] == str(2**30)
    with pytest.raises(OptimizeError) as e:
        ProviderOptions(cudnn_conv_algo_search="heuristic", device_id=-1)
    assert "cudnn_conv_algo_search='heuristic'" in e.value.message and "device_id=-1" in e.value.message


def test_unknown_provider_is_one_error_naming_the_choices():
    with pytest.raises(OptimizeError) as e:
        providers.check_provider("tpu", ProviderOptions())
    assert "'tpu'" in e.value.message and "cpu, cuda" in e.value.fix


def test_cuda_listed_but_absent_is_an_error_not_a_cpu_fallback(monkeypatch):
    """onnxruntime without the CUDA EP: the check names the EP instead of quietly running on the CPU."""
    if HAS_CUDA:
        pytest.skip("this onnxruntime lists the CUDA EP")
    with pytest.raises(OptimizeError) as e:
        providers.check_provider("cuda", ProviderOptions())
    assert "CUDAExecutionProvider" in e.value.message and "--provider cpu" in e.value.fix


def test_cuda_library_problem_names_what_does_not_load(tmp_path, monkeypatch):
    from optimize.runtime import providers

    assert HAS_CUDA or providers._cuda_library_problem() is None  # the CPU package has no CUDA library to load
    capi = tmp_path / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (capi / "libonnxruntime_providers_cuda.so").write_bytes(b"not a shared object")
    monkeypatch.setattr(providers.ort, "__file__", str(tmp_path / "onnxruntime" / "__init__.py"))
    problem = providers._cuda_library_problem()
    assert problem is not None and "libonnxruntime_providers_cuda.so" in problem and "\n" not in problem


@pytest.mark.parametrize("spinning", [False, True])
def test_intra_op_spinning_reaches_the_session(spinning):
    """ProviderOptions.intra_op_spinning sets ORT's allow_spinning; off by default (BENCHMARKS.md 9.4)."""
    assert ProviderOptions().intra_op_spinning is False
    opts = providers._session_options(2, spinning)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")
