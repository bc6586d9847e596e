"""Citations for the suite, the paper it follows, and every rule in a table.
Each rule brings its own entries (``LearningRule.citations``); this module
holds only the suite's."""
from models import RULES
from models.rules.base import BARTUNOV2018

ENTRIES = {
    "biobench": {"type": "software", "author": "{biobench developers}",
                 "title": "biobench: a benchmark suite for biologically plausible learning rules on fully "
                          "connected, convolutional and locally connected networks",
                 "year": "2026", "version": "0.1.0", "note": "See CITATION.cff"},
    "bartunov2018": BARTUNOV2018,
}


def entry(key):
    """A citation by key: the suite's own, or one a rule (built-in or plug-in)
    brings in its ``citations`` dict (``{key: {"type": ..., "author": ..., ...}}``)."""
    if key in ENTRIES:
        return ENTRIES[key]
    for name in RULES.registered():
        brought = RULES.get(name).citations
        if key in brought:
            return brought[key]
    raise ValueError(f"no citation entry {key!r}")


def keys_for_rules(rules):
    keys = ["biobench", "bartunov2018"]
    for name in rules:
        for key in RULES.get(name).citations:
            if key not in keys:
                keys.append(key)
    return keys


def bibtex(keys):
    blocks = []
    for key in keys:
        fields = dict(entry(key))
        kind = fields.pop("type")
        body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields.items())
        blocks.append(f"@{kind}{{{key},\n{body}\n}}")
    return "\n\n".join(blocks) + "\n"


def plain_text(keys):
    lines = []
    for key in keys:
        e = entry(key)
        arxiv = f"arXiv:{e['eprint']}" if "eprint" in e else e.get("note", "")
        venue = e.get("journal") or e.get("booktitle") or arxiv
        authors = e["author"].replace("{", "").replace("}", "").replace("\\o", "ø").replace("\\~a", "ã")
        authors = authors.replace(" and ", "; ")
        lines.append(f"[{key}] {authors} ({e['year']}). {e['title']}." + (f" {venue}." if venue else ""))
    return "\n".join(lines) + "\n"
