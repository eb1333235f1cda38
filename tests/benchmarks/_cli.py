"""Shared by the script tests: a command line that a script refuses."""
import pytest


def refused(main, argv, capsys) -> str:
    """``main(argv)`` exits 2 (argparse's code for a refused command line); its stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err
