"""Implementations of tokgen subcommands (tokenize, sample, eval, ...), registered in tokgen.cli.COMMANDS."""
