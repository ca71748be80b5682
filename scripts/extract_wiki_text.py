"""Regenerate `mpq_serving/data/wiki_eval.txt`, `wiki_calib.txt` and `ATTRIBUTION.md`.

The project ships real English text for perplexity and calibration, because nothing may be downloaded at
run time. The source is the 2016 Wikipedia dump that the `gensim` wheel carries as test data (206 pages).
This script is run by hand, once; its output is committed. It needs the wheel and `mwparserfromhell`:

    pip download --no-deps gensim -d /tmp/g
    pip install mwparserfromhell
    python scripts/extract_wiki_text.py /tmp/g/gensim-*.whl

Articles (not paragraphs) are split between the two files, so calibration never sees evaluation text.
"""

from __future__ import annotations

import argparse
import bz2
import io
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

import mwparserfromhell

DUMP_IN_WHEEL = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
DATA_DIR = Path(__file__).resolve().parents[1] / "mpq_serving" / "data"
NS = "{http://www.mediawiki.org/xml/export-0.10/}"

# Tags whose content is not running prose (citations, tables, formulas, image galleries).
DROP_TAGS = {"ref", "references", "gallery", "table", "math", "timeline", "imagemap", "score", "syntaxhighlight",
             "source", "templatedata", "chem", "ce", "hiero", "sub", "sup"}
# Link namespaces that are not text: images, categories, interlanguage links.
DROP_LINK_PREFIX = re.compile(r"^\s*:?\s*(file|image|category|media|[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
# Trailing sections that are lists of citations and links, not prose.
DROP_SECTIONS = {"references", "external links", "see also", "further reading", "notes", "bibliography",
                 "sources", "footnotes", "citations", "notes and references", "works cited", "gallery"}
MIN_ARTICLE_CHARS = 2000
# Only the start of each article (lead + first sections): many topics beat a few long articles.
MAX_ARTICLE_CHARS = 5000


@dataclass
class Article:
    title: str
    text: str


def iter_pages(dump: bytes):
    """Yield (title, wikitext) of main-namespace pages that are not redirects."""
    for _, elem in ET.iterparse(bz2.BZ2File(io.BytesIO(dump)), events=("end",)):
        if elem.tag != NS + "page":
            continue
        title = elem.findtext(NS + "title") or ""
        ns = elem.findtext(NS + "ns")
        redirect = elem.find(NS + "redirect")
        text = elem.findtext(f"{NS}revision/{NS}text") or ""
        elem.clear()
        if ns == "0" and redirect is None and not text.lstrip().lower().startswith("#redirect"):
            yield title, text


def wikitext_to_plain(wikitext: str) -> str:
    """Markup-free prose: headings kept as their own lines, tables/refs/images/citation sections dropped."""
    code = mwparserfromhell.parse(wikitext)
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).strip().lower() in DROP_TAGS or str(tag).startswith("{|"):
            _remove(code, tag)
    for link in code.filter_wikilinks(recursive=True):
        if DROP_LINK_PREFIX.match(str(link.title)):
            _remove(code, link)
    for template in code.filter_templates(recursive=False):
        _remove(code, template)
    text = re.sub(r"\{\|.*?\|\}", "", str(code), flags=re.DOTALL)  # wiki tables the parser left as text
    plain = mwparserfromhell.parse(text).strip_code(normalize=True, collapse=True, keep_template_params=False)
    return _clean_lines(plain)


def _remove(code: mwparserfromhell.wikicode.Wikicode, node) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with an enclosing node
        pass


def _clean_lines(plain: str) -> str:
    """Drop citation sections, list/table debris and empty lines; collapse spaces."""
    out: list[str] = []
    skipping = False
    for raw in plain.splitlines():
        line = re.sub(r"[ \t\u00a0]+", " ", raw).strip()
        heading = re.fullmatch(r"(=+)\s*(.*?)\s*\1", line)
        if heading:
            skipping = heading.group(2).lower() in DROP_SECTIONS
            if not skipping:
                out.append(heading.group(2))
            continue
        if skipping or not line:
            continue
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)  # parentheses emptied by removed templates
        line = re.sub(r"\s+([,.;:])", r"\1", line).strip()
        if len(line) < 3 or line.startswith(("|", "!", "{", "}", "[[")) or re.fullmatch(r"[\W\d_]+", line):
            continue
        out.append(line)
    # A heading followed by nothing (its content was all dropped) is noise.
    kept = [ln for i, ln in enumerate(out)
            if not (_is_heading_like(ln) and (i + 1 == len(out) or _is_heading_like(out[i + 1])))]
    return "\n".join(kept)


def _is_heading_like(line: str) -> bool:
    return len(line) < 60 and not line.endswith((".", "!", "?", ":", ";", '"', ")"))


def head_of(text: str, limit: int) -> str:
    """Whole lines from the start of `text` up to `limit` characters, not ending on a heading."""
    lines: list[str] = []
    size = 0
    for line in text.splitlines():
        if lines and size + len(line) + 1 > limit:
            break
        lines.append(line)
        size += len(line) + 1
    while len(lines) > 1 and _is_heading_like(lines[-1]):
        lines.pop()
    return "\n".join(lines)


def split_articles(articles: list[Article], eval_chars: int, calib_chars: int) -> tuple[list[Article], list[Article]]:
    """Alternate whole articles between eval and calib (in dump order) until each has its size."""
    evals: list[Article] = []
    calibs: list[Article] = []
    sizes = [0, 0]
    targets = [eval_chars, calib_chars]
    for i, art in enumerate(articles):
        # Send an article to eval twice as often as to calib (the eval slice is ~2x larger).
        want = 0 if i % 3 != 2 else 1
        if sizes[want] >= targets[want]:
            want = 1 - want
        if sizes[want] >= targets[want]:
            break
        (evals if want == 0 else calibs).append(art)
        sizes[want] += len(art.text) + 2
    if sizes[0] < eval_chars or sizes[1] < calib_chars:
        raise SystemExit(f"dump too small: got eval {sizes[0]} / calib {sizes[1]} chars")
    return evals, calibs


def truncate(articles: list[Article], limit: int) -> str:
    """Join articles and cut the last one at a line boundary so the file is about `limit` characters."""
    text = "\n\n".join(a.text for a in articles)
    if len(text) <= limit:
        return text + "\n"
    cut = text.rfind("\n", 0, limit)
    return text[:cut].rstrip() + "\n"


ATTRIBUTION = """# Text data: attribution and licence

`wiki_eval.txt` ({eval_kb} KB, {n_eval} articles) and `wiki_calib.txt` ({calib_kb} KB, {n_calib} articles) are
derived slices of English Wikipedia: the article text of a 2016 dump (MediaWiki 1.27) that the `gensim`
Python wheel ships as test data, `{dump}`.

Wikipedia text is licensed under the Creative Commons Attribution-ShareAlike licence
([CC BY-SA 3.0](https://creativecommons.org/licenses/by-sa/3.0/); current text also
[CC BY-SA 4.0](https://creativecommons.org/licenses/by-sa/4.0/)) and, where applicable, the GFDL.
Authors: the Wikipedia contributors to each article below; the full revision history of every article is on
Wikipedia. Changes made here: wiki markup, templates, tables, references, images and the "References",
"External links", "See also" (and similar) sections were removed with `mwparserfromhell`, whitespace was
normalised, only the first ~{max_chars} characters (whole lines) of each article were kept, whole
articles were assigned to one of the two files, and the last article of each file is cut at a line
boundary. These derived files are shared under CC BY-SA 4.0.

Regenerate with `scripts/extract_wiki_text.py` (its docstring says how).

## wiki_eval.txt articles (in order)

{eval_titles}

## wiki_calib.txt articles (in order)

{calib_titles}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="the downloaded gensim wheel (.whl)")
    parser.add_argument("--eval-kb", type=int, default=250)
    parser.add_argument("--calib-kb", type=int, default=120)
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args()

    with zipfile.ZipFile(args.wheel) as wheel:
        dump = wheel.read(DUMP_IN_WHEEL)
    articles = [Article(title, head_of(plain, MAX_ARTICLE_CHARS)) for title, wikitext in iter_pages(dump)
                if len(plain := wikitext_to_plain(wikitext)) >= MIN_ARTICLE_CHARS]
    eval_chars, calib_chars = args.eval_kb * 1000, args.calib_kb * 1000
    evals, calibs = split_articles(articles, eval_chars, calib_chars)
    eval_text, calib_text = truncate(evals, eval_chars), truncate(calibs, calib_chars)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wiki_eval.txt").write_text(eval_text, encoding="utf-8")
    (args.out / "wiki_calib.txt").write_text(calib_text, encoding="utf-8")
    (args.out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(
        eval_kb=len(eval_text.encode()) // 1000, calib_kb=len(calib_text.encode()) // 1000,
        n_eval=len(evals), n_calib=len(calibs), dump=DUMP_IN_WHEEL, max_chars=f"{MAX_ARTICLE_CHARS:,}",
        eval_titles="\n".join(f"- {a.title}" for a in evals),
        calib_titles="\n".join(f"- {a.title}" for a in calibs),
    ), encoding="utf-8")
    print(f"{len(articles)} articles; eval {len(eval_text)} chars ({len(evals)} articles), "
          f"calib {len(calib_text)} chars ({len(calibs)} articles) -> {args.out}")


if __name__ == "__main__":
    main()
