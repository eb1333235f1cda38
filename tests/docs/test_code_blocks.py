"""Every ```python block of README.md and docs/**/*.md runs.

The blocks of one page run in order in one namespace (a page may build on its earlier blocks).
Names a snippet uses without defining them — ``embeddings``, ``labels``, ``trunk``,
``train_set`` ... — come from :func:`_context`, the objects a reader would have at hand. The few
blocks that need a GPU, downloaded data or several processes are listed in ``SKIP`` with the
reason; everything else must run. Matching is by a substring of the block, so an edited block
that no longer matches runs (and fails loudly if it cannot).
"""
import glob
import os
import re
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                recursive=True))
#: a fence at any indentation (a block inside a list item is indented), closed at the same one
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)

#: (page, substring of the block) -> why it does not run here
SKIP = {
    ("README.md", "trainer.train(num_epochs=2)"):
        "the quick start trains for 2 epochs: tests/test_readme_quick_start.py runs it and "
        "asserts its P@1",
    ("docs/losses.md", "DDP(model"):
        "needs torch.distributed worker processes: tests/examples/test_distributed_example.py "
        "runs examples/distributed_grouploss.py with 2 processes",
    ("docs/datasets.md", 'root="/data/omniglot"'):
        "needs the full Omniglot download under /data/omniglot",
    ("docs/inference.md", "trunk.load_state_dict(...)"):
        "needs trained DenseNet-121 weights and an image dataset; notebook 3 "
        "(examples/notebooks/03_grouploss_pp_inference.ipynb) runs these calls on a trained trunk",
}


def _blocks(page):
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    for match in BLOCK.finditer(text):
        line = text[:match.start()].count("\n") + 2
        yield line, textwrap.dedent(match.group(2))


def _skip_reason(page, code):
    for (skip_page, needle), reason in SKIP.items():
        if skip_page == page and needle in code:
            return reason
    return None


def _context():
    """The objects the snippets assume: a batch, a small trunk, the embedded Omniglot splits."""
    from torchvision import transforms as T

    from pml_grouploss.datasets import Omniglot

    torch.manual_seed(0)
    tf = T.Compose([T.ToTensor(), T.Normalize([0.08], [0.25])])
    train_set = Omniglot(split="train", transform=tf)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    return {
        "__name__": "__doc_snippet__",
        "embeddings": torch.randn(32, 16),
        "labels": torch.arange(8).repeat_interleave(4),
        "train_set": train_set,
        "train_labels": train_set.labels,
        "num_classes": train_set.num_classes,
        "trunk": trunk,
        "embedder": torch.nn.Linear(8, 16),
    }


CASES = [(page, line, code) for page in PAGES for line, code in _blocks(page)]


def test_the_pages_have_code_blocks():
    pages = {page for page, _, _ in CASES}
    assert {"README.md", "docs/index.md", "docs/losses.md", "docs/distances.md",
            "docs/miners.md"} <= pages, pages
    indented = [code for page, line, code in CASES if page == "docs/losses.md"
                and "torch.optim.SparseAdam(loss.parameters()" in code]
    assert len(indented) == 1 and indented[0].startswith("import torch"), indented


def test_every_skip_matches_a_block():
    for (page, needle), _ in SKIP.items():
        assert any(p == page and needle in code for p, _, code in CASES), (
            f"SKIP entry {(page, needle)} matches no block any more: remove it")


@pytest.mark.parametrize("page", sorted({page for page, _, _ in CASES}))
def test_code_blocks_run(page, capsys):
    namespace = _context()
    ran, skipped = 0, []
    for p, line, code in CASES:
        if p != page:
            continue
        reason = _skip_reason(page, code)
        if reason:
            skipped.append(f"{page}:{line}: {reason}")
            continue
        exec(compile(code, f"{page}:{line}", "exec"), namespace)
        ran += 1
    if not ran:
        pytest.skip("; ".join(skipped))
