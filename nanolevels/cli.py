"""What every level script shares: the common flags, the default paths and the user-error rule.

A user's mistake (bad flag, corrupt checkpoint) is a ValueError, a missing file or the machine's
problem an OSError, with a message that says what to do; `run` prints it as one line and exits 2.
References: karpathy/nanochat (a package plus thin scripts that import it).
"""

import argparse
import dataclasses
import os
import sys

import torch

from nanolevels.device import DEVICES, DTYPES

# The scripts' default paths: where each one writes and the next one looks (relative to the working
# directory, the repository's root when a learner runs them; the world lives beside prepare.py).
WORLD_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "data", "world")
MODEL = "out/pretrain/model.safetensors"  # train_pretrain.py's
RAG_OUT = "out/rag"  # rag.py's: the retrieval index, metrics.json, the graph
READER = "out/lora/rag-qa/adapter.safetensors"  # train_lora.py --task rag-qa's; the agent's start
AGENT = "out/lora/agent/adapter.safetensors"  # train_lora.py --task agent's


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with a usage error in one line (not the whole usage), as every error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def given(self, argv) -> set[str]:
        """The flags (by dest) that the command line sets, as against those left at the default."""
        unset = object()
        namespace = argparse.Namespace(**{a.dest: unset for a in self._actions})
        self.parse_known_args(argv, namespace)  # argparse fills in defaults only where none is
        return {dest for dest, value in vars(namespace).items() if value is not unset}


class _SetThreads(argparse.Action):
    """--threads N calls torch.set_num_threads(N) as the flag is read: every script obeys it."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value < 1:
            parser.error(f"--threads must be at least 1, got {value}")
        torch.set_num_threads(value)
        setattr(namespace, self.dest, value)


def add_device_flags(parser, dtype: bool = True) -> None:
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="where to run: auto picks cuda, then mps, then cpu (default: auto)")
    parser.add_argument("--threads", type=int, default=None, action=_SetThreads,
                        help="CPU threads for torch (default: torch's own, one per core); on a "
                             "machine where other programs are busy, fewer (even 1) can be many "
                             "times faster")
    if dtype:
        parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                            help="compute dtype; bfloat16/float16 run under autocast "
                                 "(default: float32)")


def run(main, argv=None) -> int:
    """Call main(argv); turn user errors into one line on stderr and exit code 2."""
    try:
        return main(argv) or 0
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_config_flags(parser, config_cls, title: str, exclude=(), **defaults) -> None:
    """One flag per field of a config dataclass (--max-steps for max_steps), in a --help section
    `title`; `defaults` overrides a field's default here; fields in `exclude` the script defines."""
    where = f"{config_cls.__module__.replace('.', '/')}.py"
    group = parser.add_argument_group(title, f"one flag per field of {config_cls.__name__} "
                                             f"in {where}")
    for f in dataclasses.fields(config_cls):
        if f.name in exclude:
            continue
        default = defaults.get(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
        if f.type in (bool, "bool"):
            group.add_argument(flag, action="store_true", default=default, help=help_text)
        else:
            group.add_argument(flag, type=type(default), default=default, help=help_text)


def config_from_args(config_cls, args):
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})
