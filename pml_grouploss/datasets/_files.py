"""Reading dataset files with errors that name the file, the line and the fix.

PIL says "image file is truncated" and a raw ``a, b = line.split()`` says "too many values to
unpack"; neither names the file. These helpers turn both into messages that do.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from PIL import Image


def read_image(path: str, mode: str, what: str, hint: str) -> Image.Image:
    """Decode the image at ``path`` fully and convert it to ``mode``.

    A missing file raises ``FileNotFoundError`` and an undecodable one (truncated, not an image)
    ``OSError``; both messages name ``path``, ``what`` (the dataset) and ``hint`` (what to do).
    """
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{what}: image file {path} not found. {hint}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(
            f"{what}: cannot read image file {path} ({err}); the file is damaged (truncated or not "
            f"an image). {hint}"
        ) from err


def read_fields(
    path: str,
    num_fields: int,
    expected: str,
    sep: Optional[str] = None,
    int_fields: Sequence[int] = (),
    header: Optional[Sequence[str]] = None,
) -> List[List[str]]:
    """The lines of the annotation file ``path`` split into exactly ``num_fields`` fields.

    ``sep=None`` splits on whitespace (as ``str.split()``), otherwise on ``sep``. The fields at
    ``int_fields`` must be integers. With ``header``, line 1 must consist of exactly those fields
    and is not returned. Any other line (blank lines included: the loaders that read these files
    crash on them) raises ``ValueError`` naming the file, the 1-based line number, the offending
    text and ``expected`` (the format, e.g. ``"<image_id> <path>"``).
    """
    rows: List[List[str]] = []
    for number, line in enumerate(read_lines(path, expected), start=1):
        text = line.rstrip("\r\n")
        fields = [x.strip() for x in text.split(sep)] if sep is not None else text.split()
        if number == 1 and header is not None:
            if fields != list(header):
                _malformed(path, number, text, "the header " + " ".join(header))
            continue
        if len(fields) != num_fields or not all(_is_int(fields[i]) for i in int_fields):
            _malformed(path, number, text, expected)
        rows.append(fields)
    return rows


def read_lines(path: str, expected: str) -> List[str]:
    """The lines of the text file ``path``; ``ValueError`` naming it and ``expected`` (the
    format of its lines) when it does not decode as text (a damaged or binary file)."""
    try:
        with open(path, "r") as f:
            return f.readlines()
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not a text file ({err}); expected lines {expected}: the file is damaged "
            "or another file has its name"
        ) from None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _malformed(path: str, number: int, text: str, expected: str) -> None:
    got = "an empty line" if not text.strip() else repr(text)
    raise ValueError(f"{path}, line {number}: expected {expected}, got {got}")
