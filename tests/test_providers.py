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
    """ProviderOptions.intra_op_spinning sets ORT's allow_spinning; "auto" by default, a set value is kept as set."""
    assert ProviderOptions().intra_op_spinning == "auto"
    assert ProviderOptions(intra_op_spinning=spinning).resolved(2) == (ProviderOptions(intra_op_spinning=spinning), f"{'on' if spinning else 'off'}: set")
    opts = providers._session_options(2, spinning)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")


@pytest.mark.parametrize(
    "pool, idle, spin",
    [(2, 1.95, True), (2, 1.5, False), (2, 0.3, False), (4, 1.99, False), (1, 2.0, False), (2, None, False)],
    ids=["idle", "half-busy", "busy", "more-threads-than-cores", "one-thread", "unknown"],
)
def test_spinning_choice_spins_only_with_an_idle_core_per_thread(pool, idle, spin):
    got, why = providers.spinning_choice(pool, 2.0, idle)
    assert got is spin and why.startswith("on" if spin else "off") and "\n" not in why


def test_idle_cores_from_proc_stat_samples(tmp_path, monkeypatch):
    from optimize import host

    monkeypatch.setattr(host.os, "sched_getaffinity", lambda pid: {0, 1})
    stat = tmp_path / "stat"

    def sample(cpu0: tuple[int, ...], cpu1: tuple[int, ...]) -> dict:
        rows = ["cpu  0 0 0 0 0 0 0 0"] + [f"cpu{i} " + " ".join(map(str, t)) for i, t in enumerate((cpu0, cpu1))]
        stat.write_text("\n".join(rows) + "\nintr 5\n")
        return host.cpu_times(stat)

    # user nice system idle iowait irq softirq steal: cpu0 all idle, cpu1 a niced job the whole time
    before = sample((10, 0, 0, 100, 0, 0, 0, 0), (10, 50, 0, 100, 0, 0, 0, 0))
    after = sample((10, 0, 0, 200, 0, 0, 0, 0), (10, 150, 0, 100, 0, 0, 0, 0))
    assert host.idle_cores(before, after) == pytest.approx(1.0)
    assert host.idle_cores(None, after) is None
    assert host.cpu_times(tmp_path / "missing") is None
    with pytest.raises(OptimizeError, match="intra_op_spinning"):
        ProviderOptions(intra_op_spinning="sometimes")
