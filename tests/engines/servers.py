"""Start a real serving-engine process for a test and stop it afterwards.

`VllmServer` runs the command `mpq serve --engine vllm` runs (`integrations.vllm.launch.vllm_command`:
`python -m vllm.entrypoints.openai.api_server` from the interpreter that has vLLM) on a model folder, on a free port, with its caches in a temporary
folder, waits until `/v1/models` answers, and kills the whole process group at the end. When the
server dies during start-up the exception carries the tail of its log, so a failing test says why.

Use it through a module-scoped fixture so one server serves a whole test module:

    @pytest.fixture(scope="module")
    def server(tmp_path_factory, packed_dir):
        with VllmServer(packed_dir, tmp_path_factory.mktemp("vllm"), ["--enforce-eager"]) as s:
            yield s
"""

from __future__ import annotations

import os
import signal
import socket
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path



def vllm_cpu_int4_kernel() -> bool:
    """Whether vLLM's CPU int4 kernel (cpu_gemm_wna16) exists on this machine: not in the AVX2 build vLLM
    loads on a CPU without AVX-512, where stock vLLM crashes on its first GPTQ / AWQ request."""
    from mpq_serving.integrations.vllm.native import cpu_int4_kernel_available

    return cpu_int4_kernel_available()


STOCK_INT4_REASON = ("stock vLLM's GPTQ / AWQ path needs cpu_gemm_wna16, absent from the AVX2 build vLLM loads on "
                     "this CPU (no AVX-512); our plugin runs those layers on its own kernels there")


class ServerStartError(RuntimeError):
    """The server process exited, or did not answer in time; the message ends with its log tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class VllmServer:
    """A vLLM OpenAI server on `model_dir`; a context manager. `base_url` ends in /v1."""

    label = "vLLM"

    def __init__(self, model_dir: Path | str, work_dir: Path | str, extra_args: list[str] | tuple = (),
                 *, timeout_s: float = 600.0, max_model_len: int = 512, max_num_seqs: int = 8,
                 env: dict[str, str] | None = None, launcher: list[str] | None = None):
        self.model_dir = str(model_dir)
        self.work_dir = Path(work_dir)
        self.extra_args = list(extra_args)
        self.timeout_s = timeout_s
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.extra_env = dict(env or {})
        # Another command that starts vLLM's server (e.g. `mpq serve ... --engine vllm`); it gets
        # `--port P` appended, then `--` and vLLM's own arguments.
        self.launcher = launcher
        self.port = free_port()
        self.log_path = self.work_dir / "server.log"
        self.process: subprocess.Popen | None = None
        self.tmp_dir: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        if self.launcher is not None:
            return [*self.launcher, "--port", str(self.port), "--", "--max-model-len", str(self.max_model_len),
                    "--max-num-seqs", str(self.max_num_seqs), *self.extra_args]
        from mpq_serving.integrations.vllm.launch import vllm_command

        return vllm_command(Path(self.model_dir), "127.0.0.1", self.port, None, [
            "--max-model-len", str(self.max_model_len), "--max-num-seqs", str(self.max_num_seqs), *self.extra_args])

    def environment(self) -> dict[str, str]:
        cache = self.work_dir / "cache"
        # vLLM puts its ZMQ IPC sockets in TMPDIR, and a socket path may not exceed 107 characters:
        # pytest's tmp folders are too deep, so a short folder of our own, removed in stop().
        if self.tmp_dir is None:
            self.tmp_dir = Path(tempfile.mkdtemp(prefix="vllm-"))
        tmp = self.tmp_dir
        env = dict(os.environ)
        env.update({
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: plenty for tests, small on a shared box
            "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "TRITON_CACHE_DIR": str(cache / "triton"),
            "TMPDIR": str(tmp),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self) -> "VllmServer":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=self.environment(), cwd=self.work_dir, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(f"{self.label} server exited with code {code} during start-up:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerStartError(f"{self.label} server did not answer within {self.timeout_s:.0f} s:\n{self.log()}")

    def wait_exit(self, timeout_s: float | None = None) -> int:
        """For servers expected to fail: wait for the process to exit and return its code."""
        try:
            return self.process.wait(timeout=timeout_s or self.timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def log(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the whole process group (vLLM spawns engine workers), SIGKILL what is left."""
        if self.process is None:
            return
        try:
            self._stop_process()
        finally:
            if self.tmp_dir is not None:
                shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _stop_process(self) -> None:
        try:
            pgid = os.getpgid(self.process.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()

    def __enter__(self) -> "VllmServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class SglangServer(VllmServer):
    """SGLang's server on CPU, started with the command `mpq serve --engine sglang` runs (`sglang_command`).

    CPU engine (`SGLANG_USE_CPU_ENGINE=1`, torch-native attention) with a small KV pool; same start,
    readiness (`/v1/models`), log and process-group handling as VllmServer.
    """

    label = "SGLang"

    def __init__(self, model_dir: Path | str, work_dir: Path | str, extra_args: list[str] | tuple = (),
                 *, timeout_s: float = 600.0, max_total_tokens: int = 4096, env: dict[str, str] | None = None,
                 launcher: list[str] | None = None):
        super().__init__(model_dir, work_dir, extra_args, timeout_s=timeout_s, env=env, launcher=launcher)
        self.max_total_tokens = max_total_tokens

    def command(self) -> list[str]:
        cpu_args = ["--device", "cpu", "--attention-backend", "torch_native",
                    "--max-total-tokens", str(self.max_total_tokens), *self.extra_args]
        if self.launcher is not None:  # e.g. `mpq serve PACKED --engine sglang`
            return [*self.launcher, "--port", str(self.port), "--", *cpu_args]
        from mpq_serving.integrations.sglang.launch import sglang_command

        return sglang_command(Path(self.model_dir), "127.0.0.1", self.port, None, cpu_args)

    def environment(self) -> dict[str, str]:
        env = super().environment()
        # One OpenMP thread: the test process and the server share the cores, and spinning OpenMP
        # threads on an oversubscribed CPU slow a forward pass down by orders of magnitude.
        env.update({"SGLANG_USE_CPU_ENGINE": "1", "OMP_NUM_THREADS": "1", **self.extra_env})
        return env
