"""One module per CLI command. Each defines ``add_parser(subparsers)`` (which sets ``func``) and a
``run(args) -> int``. A new command is one new module plus one line in ``COMMANDS``."""

COMMANDS = [
    "nas.commands.show",
    "nas.commands.measure",
    "nas.commands.calibrate",
    "nas.commands.listing",
    "nas.commands.search",
    "nas.commands.report",
    "nas.commands.train",
    "nas.commands.scale",
    "nas.commands.worker",
    "nas.commands.export",
]
