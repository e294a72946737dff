"""The ``mslddm`` command line: one sub-command per job, each in its own module under ``mslddm.commands``.

A sub-command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``mslddm --help`` stays fast and a command whose
optional dependencies are missing does not break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; the order is the order shown by --help.
COMMANDS = {
    "generate": "mslddm.commands.generate",
    "make-dataset": "mslddm.commands.make_dataset",
    "augment-dataset": "mslddm.commands.augment_dataset",
    "encode-latents": "mslddm.commands.encode_latents",
    "evaluate": "mslddm.commands.evaluate",
    "compare": "mslddm.commands.compare",
    "accompany": "mslddm.commands.accompany",
    "separate": "mslddm.commands.separate",
    "finetune": "mslddm.commands.finetune",
    "export": "mslddm.commands.export",
    "calibrate-levels": "mslddm.commands.calibrate_levels",
    "convert-original": "mslddm.commands.convert_original",
    "convert-msdm": "mslddm.commands.convert_msdm",
}


# The extra that installs a command's optional dependencies (pip install "mslddm[EXTRA]").
EXTRAS = {"make-dataset": "data", "augment-dataset": "eval", "evaluate": "eval", "compare": "eval", "finetune": "train"}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if any(word in text.lower() for word in ("default", "none means", "unset")):
            return text
        return super()._get_help_string(action)


def _available_commands():
    for name, module_name in COMMANDS.items():
        try:
            spec = importlib.util.find_spec(module_name)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            yield name, module_name


def build_parser(argv_command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mslddm",
        description="Multi-source music generation with latent diffusion.",
    )
    from mslddm import __version__

    parser.add_argument("--version", action="version", version=f"mslddm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in _available_commands():
        if argv_command is not None and name != argv_command:
            # Only the chosen command's module is imported; the others are listed by name.
            sub.add_parser(name, add_help=False)
            continue
        try:  # a scratch parser first: add_arguments may import the command's optional dependencies
            module = importlib.import_module(module_name)
            module.add_arguments(argparse.ArgumentParser(add_help=False))
        except ImportError as error:  # an optional dependency of this command is missing: the others still work
            missing = f"needs {error.name or error}: pip install 'mslddm[{EXTRAS.get(name, 'dev')}]'"
            if argv_command == name:
                raise SystemExit(f"mslddm {name} {missing}.") from None
            sub.add_parser(name, help=f"(unavailable here: {missing})", add_help=False)
            continue
        cmd = sub.add_parser(name, help=module.HELP, description=(module.__doc__ or module.HELP).strip(),
                             formatter_class=_HelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0 if not argv else 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
