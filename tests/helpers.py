"""Constants and helpers shared by the suite (fixtures live in ``conftest.py``).

* ``REPO``, :func:`run_nas`: the CLI as a user runs it, in a fresh interpreter.
* ``TINY_ARCH``: a network small enough to build, time and train in milliseconds.
* ``TINY_TRAIN``: the training tests' network (16 px, under 4x digits' 8 px: a digits epoch in a
  second); ``TRAIN_ARGS``: ``nas train`` on it, 3 epochs of progressive learning at 8 -> 16 px.
* :func:`error_line`: the one ``nas: error:`` line a refused command prints, checked.
* :class:`Evil`: an object whose unpickling runs a command (a checkpoint must be refused unread);
  ``NOT_CHECKPOINTS``: contents of a ``checkpoint.pt`` that is no PyTorch file at all.
* ``TINY``: ``nas search`` / ``nas grid-scale`` flags for a real but tiny trial (fake data, 16 px,
  one epoch, proxy width and depth 0.1, the proxy's step timed: tests about the step-time model and
  the full-size step name ``--step-time table`` or ``measure`` with a tiny target themselves).
* Step-time tables go to a directory of this test session (``NAS_CACHE_DIR``), never to ~/.cache.
* :data:`STANDIN`: a plugin (source text) that replaces the evaluation of a candidate by a
  deterministic stand-in (accuracy from a hash of the architecture, no training), for tests of what
  schedules trials rather than what a trial computes. In a subprocess it is a ``--plugin`` module
  (:func:`write_plugin`); in this process, :func:`standin` installs it with ``monkeypatch`` and
  :func:`in_process` runs a stand-in command line through ``nas.cli.main``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


TINY_ARCH = "stem8,r1_k3_s1_e1_i8_o8_se0.25,r2_k3_s2_e4_i8_o16_c1,head32,res32"


# res16, drop0.2 (the default): the training tests' figures (sizes, dropout) are this network's.
TINY_TRAIN = "stem8,r1_k3_s2_e1_i8_o8_c1,r1_k3_s2_e4_i8_o16,head32,res16"

TRAIN_ARGS = [
    "train",
    TINY_TRAIN,
    "--dataset",
    "digits",
    "--epochs",
    "3",
    "--width-mult",
    "1",
    "--depth-mult",
    "1",
    "--progressive",
    "s",
    "--stages",
    "3",
    "--image-size-start",
    "8",
    "--image-size-end",
    "16",
    "--batch-size",
    "128",
    "--no-progress",
]


TINY = [
    "--dataset",
    "fake",
    "--epochs",
    "1",
    "--image-size",
    "16",
    "--measure-time",
    "0.05",
    "--width-mult",
    "0.1",
    "--depth-mult",
    "0.1",
    "--batch-size",
    "32",
    "--step-time",
    "proxy",
    "--no-progress",
]


def nas_env(*path: str | os.PathLike, **extra: str) -> dict:
    """The environment of a nas subprocess: this checkout (and ``path``) first on PYTHONPATH."""
    pp = os.pathsep.join(filter(None, [*map(str, path), str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pp, **extra}


def run_nas(
    *args: str, cwd: str | os.PathLike | None = None, timeout: float = 300, env: dict | None = None
) -> tuple[int, str, str]:
    """Run the CLI as a user does, in a fresh interpreter: ``python -m nas.cli *args``.

    Returns ``(returncode, stdout, stderr)``. Warnings are not silenced, so a stray warning on stderr
    fails the tests that demand a single error line.
    """
    p = subprocess.run(
        [sys.executable, "-m", "nas.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env or nas_env(),
        timeout=timeout,
    )
    return p.returncode, p.stdout, p.stderr


def main_in_process(args, capsys) -> tuple[int, str, str]:
    """The CLI through ``nas.cli.main`` in this process: ``(returncode, stdout, stderr)`` as
    :func:`run_nas` returns them, without the seconds a fresh interpreter spends importing torch.
    ``capsys`` is pytest's fixture; what was captured before is dropped."""
    from nas.cli import main  # the CLI imports every command: only the tests that run one need it

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors exit
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def in_process(cmd: list, capsys) -> subprocess.CompletedProcess:
    """A ``python -m nas.cli ...`` command line, as the subprocess tests build it, run through
    :func:`main_in_process` instead: for tests about what a command writes and refuses, not about its
    process (kills, signals, workers keep their interpreters). A ``--plugin nas_standin`` is dropped:
    the ``standin`` fixture installs the same evaluation in this process."""
    args = [str(a) for a in cmd]
    assert args[:3] == [sys.executable, "-m", "nas.cli"], args[:3]
    args = args[3:]
    if "--plugin" in args:
        i = args.index("--plugin")
        assert args[i + 1] == "nas_standin", "only the stand-in has an in-process twin"
        del args[i : i + 2]
    rc, out, err = main_in_process(args, capsys)
    return subprocess.CompletedProcess(args, rc, out, err)


def error_line(rc: int, err: str, code: int = 2) -> str:
    """The single ``nas: error: ...`` line of a refused command (exit ``code``: 2 bad input, 1 a
    failed run), after checking there is nothing else on stderr (no traceback, no warning)."""
    lines = err.strip().splitlines()
    assert rc == code and len(lines) == 1 and lines[0].startswith("nas: error: "), (rc, err)
    return lines[0]


# Text a pickle reader misreads as opcodes ("{" is EMPTY_DICT), plain text, nothing, a zip's header.
NOT_CHECKPOINTS = {
    "json": b'{"epoch": 3}\n',
    "text": b"hello world\n",
    "empty": b"",
    "zip-header": b"PK\x03\x04 not really a zip",
}


class Evil:
    """Unpickling this runs ``touch MARKER``: what reading a checkpoint with weights_only must refuse."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_plugin(directory: Path, name: str, source: str) -> Path:
    """Write a ``--plugin`` module ``name`` into ``directory`` (created); returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return directory


# A space of exactly two architectures: four trials must propose one of them twice.
TWO_SPACE = """
from search_spaces import Architecture, Stage
from search_spaces.base import SearchSpace, register


@register("test-two")
class TwoArchitectures(SearchSpace):
    description = "two tiny networks: kernel 3 or 5"

    def decisions(self):
        return [("kernel", [3, 5])]

    def make(self, choice):
        stage = Stage("mbconv", choice["kernel"], 1, 1, 16, 1, 0.0, "id")
        return Architecture(stem=16, stages=(stage,), head=64, resolution=32)

    def reference(self):
        return self.make({"kernel": 3})
"""


# A plugin the way a user writes one: a module that registers a space and a reward. It is written
# to a directory that is on the driver's PYTHONPATH only, so the Ray workers can import it only if
# nas ships it to them (runtime_env py_modules). Trial 1's architecture is marked so the reward
# returns NaN for it; trial 2's so the reward raises: two failures, by trial number, deterministic.
FAILING = '''
"""Test plugin: trainaware, with trials 1 and 2 failing on purpose."""
import math

from rewards import register as register_reward
from rewards.trainaware import TrainAwareReward
from search_spaces.base import register as register_space
from search_spaces.trainaware import TrainAwareSpace

MARKS = {1: 0.111, 2: 0.222}  # dropout values no built-in architecture uses


@register_space("test-marked")
class MarkedSpace(TrainAwareSpace):
    def sample(self, chooser):
        arch = super().sample(chooser)
        n = getattr(chooser, "number", None)  # the Optuna trial's number
        return arch.replace(dropout=MARKS[n]) if n in MARKS else arch


@register_reward("test-failing")
class FailingReward(TrainAwareReward):
    needs = ("accuracy", "S", "P", "arch")  # a reward declares every metric it reads

    def __call__(self, metrics):
        if "drop0.111" in metrics["arch"]:
            return math.nan
        if "drop0.222" in metrics["arch"]:
            raise RuntimeError("deliberate failure of trial 2")
        return super().__call__(metrics)
'''


STANDIN = '''
"""Stand-in evaluation: a candidate's figures from a hash of its architecture string, no training and
no step-time target (NAS_STANDIN_SLEEP seconds per epoch, so a test can stop a search in the middle
of a trial). It takes the place of the ``train`` evaluator, so a test's command needs no other flag."""
import hashlib
import os
import time
import types

from nas.trial.evaluator import EVALUATORS, Evaluator, TrialPruned
from search_spaces import count_params

NUM_CLASSES = 10
REFERENCE_MS = 15.0


def _unit(text):
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 2 ** 32


class StandinEvaluator(Evaluator):
    name = "train"
    help = "a deterministic stand-in (tests)"
    needs_target = False
    needs_data = False

    @classmethod
    def load_data(cls, settings):
        return types.SimpleNamespace(num_classes=NUM_CLASSES)

    def known(self, arch, *, image_scale=1.0, fidelity=False):
        s = arch.to_string()
        step = 10.0 * (1.0 + _unit("t" + s)) * image_scale ** 2
        params = count_params(arch, NUM_CLASSES)
        ref_params = count_params(self.reference_arch, NUM_CLASSES)
        return {"arch": s, "params": params, "num_classes": NUM_CLASSES, "macs": params * 10, "cost": "step",
                "cost_ms": step, "step_time_ms": step, "step_time_method": "standin", "S": step / REFERENCE_MS,
                "P": params / ref_params, "reference_ms": REFERENCE_MS, "reference_params": ref_params,
                "device": "cpu", "device_name": "standin"}

    def evaluate(self, arch, *, seed=0, image_scale=1.0, fidelity=False, on_epoch=None):
        known = self.known(arch, image_scale=image_scale)
        acc = 0.5 + 0.4 * _unit("a" + known["arch"]) + 0.05 * (image_scale - 1.0)
        epochs = self.settings.proxy.epochs
        for epoch in range(1, epochs + 1):
            time.sleep(float(os.environ.get("NAS_STANDIN_SLEEP", "0")))
            if on_epoch is not None and on_epoch(epoch, acc * epoch / epochs, known):
                raise TrialPruned(f"stopped after epoch {epoch}", {**known, "accuracy": acc * epoch / epochs})
        return self.score({**known, "accuracy": acc, "epochs": epochs})

    def repeat(self, arch, *, seed, image_scale=1.0):
        # the second training of a trial: the first's accuracy and a seed's worth of noise (NAS_STANDIN_NOISE)
        s = arch.to_string()
        noise = float(os.environ.get("NAS_STANDIN_NOISE", "0.01"))
        return 0.5 + 0.4 * _unit("a" + s) + 0.05 * (image_scale - 1.0) + noise * (2 * _unit(f"r{seed}" + s) - 1)


def install(setitem=lambda d, k, v: d.__setitem__(k, v)):
    setitem(EVALUATORS, "train", StandinEvaluator)


if __name__ != "standin_in_process":
    install()
'''
