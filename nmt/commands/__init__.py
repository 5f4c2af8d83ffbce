"""CLI subcommands; see nmt.cli for the contract each module follows."""
