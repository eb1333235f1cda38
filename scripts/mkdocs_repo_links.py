"""mkdocs hook: links from docs/ to repository files outside docs/ become repository paths.

The Markdown in docs/ is read on GitHub too, where ``[script](../examples/x.py)`` is a working
link; on the site the file does not exist, and ``mkdocs build --strict`` would fail. This hook
turns such a link into its text followed by the repository path in a code span, *only if the
file exists in the repository* — a link to a missing file stays a link and still fails the
strict build.
"""
import os
import re

# [text](target) with a relative target (no scheme, no leading "/" or "#")
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((?![a-z]+:|/|#)([^)\s]+)\)")


def on_page_markdown(markdown, page, config, files):
    docs_dir = os.path.abspath(config["docs_dir"])
    repo = os.path.dirname(docs_dir)
    page_dir = os.path.dirname(os.path.join(docs_dir, page.file.src_path))

    def replace(match):
        text, target = match.groups()
        path = os.path.normpath(os.path.join(page_dir, target.split("#")[0]))
        inside_docs = path == docs_dir or path.startswith(docs_dir + os.sep)
        if inside_docs or not os.path.exists(path):
            return match.group(0)
        relative = os.path.relpath(path, repo).replace(os.sep, "/")
        if text.strip("`") == relative:
            return f"`{relative}`"
        return f"{text} (`{relative}`)"

    return _LINK.sub(replace, markdown)
