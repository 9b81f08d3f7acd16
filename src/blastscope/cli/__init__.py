"""Command-line interface: ``blastscope COMMAND [options]`` (see ``blastscope --help``)."""
