"""Generated document corpora: every format, known chunk counts, duplicates, corrupt files,
planted facts. Shared by the ingestion tests and bench/ingest.py.

A document is a list of sections (a title and a paragraph). With `CHUNKING` below (sections
never merged, each shorter than a chunk) every section becomes exactly one chunk, in every
format; a CSV or XLSX file is one small table, one chunk.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from memory.ingest import IngestConfig

__all__ = [
    "CHUNKING", "FORMATS", "Corpus", "Doc", "Fact", "mixed_corpus", "planted_corpus", "small_config", "write_doc",
]

FORMATS = ("txt", "md", "html", "eml", "docx", "pptx", "xlsx", "csv", "pdf")

# One chunk per section: a section never exceeds new_after_n_chars and is never merged.
CHUNKING = {"max_characters": 1000, "new_after_n_chars": 1000, "overlap": 0, "combine_text_under_n_chars": 0}

_WORDS = """
account action advice agency amount analysis answer approach area argument article aspect asset
audit balance bank basis benefit board budget business buyer capital carbon career case cash
chain change channel charge circuit claim client climate code committee community company
contract control cost council county credit culture customer cycle data deal debt decision
delivery demand design detail device disk district effort energy engine equity estate event
evidence export factor farm feature figure finance fleet flight forecast freight fuel fund
garden grant growth harbour health housing import income index industry inflation input
insurance interest inventory island journal labour ladder launch lease ledger level licence
loan logistics machine margin market matter meadow measure metal method mill mineral model
module motor museum network office option orchard output owner packet panel patent payment
pension period permit pipeline plant policy portfolio power premium price process product
profit program project property quarter railway rate ratio reactor record region rental
report reserve resource retail revenue risk river road route salary sample satellite schedule
sector segment service share shipment signal site software solar source spending staff station
steel stock storage strategy supply survey system target tariff tax team tender terminal
timber token tower trade traffic training transfer transport treasury trial turbine unit
valley value vendor vessel volume wage warehouse water wind yield
""".split()
_VERBS = """
improved reduced expanded reviewed delayed approved measured doubled halved exceeded missed
tracked funded cancelled renewed audited shipped launched priced stored balanced delivered
""".split()
_ADJ = """
annual regional quarterly northern southern external internal modest strong weak steady
volatile seasonal strategic global local rural urban coastal digital manual
""".split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_ADJ), rng.choice(_WORDS), rng.choice(_VERBS), "the", rng.choice(_WORDS)]
    words += [rng.choice(("of", "for", "across", "within", "near")), rng.choice(_ADJ), rng.choice(_WORDS)]
    words += [rng.choice(_WORDS) for _ in range(rng.randint(1, 4))]
    return "The " + " ".join(words) + "."


def paragraph(rng: random.Random, chars: int) -> str:
    sentences = [_sentence(rng), _sentence(rng)]  # two or more: narrative text, never a title
    while sum(len(s) + 1 for s in sentences) < chars:
        sentences.append(_sentence(rng))
    return " ".join(sentences)


def title(rng: random.Random) -> str:
    return " ".join(w.capitalize() for w in rng.sample(_WORDS, rng.randint(2, 4)))


Section = tuple[str, str]


def write_doc(path: Path, sections: list[Section]) -> Path:
    """Write `sections` in the format named by the suffix; tables (csv, xlsx) use the first only."""
    fmt = path.suffix.lstrip(".")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "txt":
        path.write_text("\n\n".join(f"{t}\n\n{b}" for t, b in sections) + "\n")
    elif fmt == "md":
        path.write_text("\n\n".join(f"## {t}\n\n{b}" for t, b in sections) + "\n")
    elif fmt == "html":
        body = "".join(f"<h2>{t}</h2>\n<p>{b}</p>\n" for t, b in sections)
        path.write_text(f"<html><head><title>{sections[0][0]}</title></head><body>\n{body}</body></html>\n")
    elif fmt == "eml":
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "ops@example.org", "board@example.org", sections[0][0]
        msg.set_content("\n\n".join(f"{t}\n\n{b}" for t, b in sections) + "\n")
        path.write_bytes(bytes(msg))
    elif fmt == "docx":
        import docx

        document = docx.Document()
        for t, b in sections:
            document.add_heading(t, level=2)
            document.add_paragraph(b)
        document.save(path)
    elif fmt == "pptx":
        import pptx

        deck = pptx.Presentation()
        for t, b in sections:
            slide = deck.slides.add_slide(deck.slide_layouts[1])
            slide.shapes.title.text = t
            slide.placeholders[1].text = b
        deck.save(path)
    elif fmt in ("csv", "xlsx"):
        rows = _table(sections[0])
        if fmt == "csv":
            with path.open("w", newline="") as f:
                csv.writer(f).writerows(rows)
        else:
            import openpyxl

            book = openpyxl.Workbook()
            for row in rows:
                book.active.append(row)
            book.save(path)
    elif fmt == "pdf":
        from fpdf import FPDF

        pdf = FPDF()
        pdf.set_font("Helvetica", size=11)
        for t, b in sections:  # one section per page
            pdf.add_page()
            pdf.multi_cell(0, 6, f"{t}\n\n{b}")
        pdf.output(str(path))
    else:
        raise ValueError(f"no writer for {fmt!r}")
    return path


def _table(section: Section) -> list[list[str]]:
    """A small table (under one chunk) whose cells carry the section's words."""
    words = section[1].rstrip(".").split()
    rows = [["item", "figure", "note"]]
    for i in range(0, min(len(words), 48), 6):
        rows.append([f"{section[0].split()[0].lower()}-{i // 6}", str(100 + i), " ".join(words[i : i + 6])])
    return rows


def expected_chunks(fmt: str, sections: list[Section]) -> int:
    return 1 if fmt in ("csv", "xlsx") else len(sections)


@dataclass
class Doc:
    path: Path
    chunks: int
    duplicate_of: Path | None = None


@dataclass
class Corpus:
    root: Path
    docs: list[Doc] = field(default_factory=list)
    corrupt: list[Path] = field(default_factory=list)

    @property
    def expected_chunks(self) -> int:
        return sum(d.chunks for d in self.docs if d.duplicate_of is None)

    @property
    def files(self) -> int:
        return len(self.docs) + len(self.corrupt)


def _sections(rng: random.Random, n: int, chars: tuple[int, int]) -> list[Section]:
    return [(title(rng), paragraph(rng, rng.randint(*chars))) for _ in range(n)]


def mixed_corpus(
    root: Path,
    n_docs: int,
    *,
    corrupt: int = 5,
    duplicates: int = 20,
    sections: tuple[int, int] = (1, 3),
    section_chars: tuple[int, int] = (300, 600),
    long_pdfs: int = 0,
    long_pdf_pages: int = 20,
    seed: int = 0,
) -> Corpus:
    """`n_docs` files in total: documents of every format, `duplicates` byte-copies of some of
    them, `corrupt` broken files, and `long_pdfs` PDFs of `long_pdf_pages` pages."""
    rng = random.Random(seed)
    corpus = Corpus(root)
    originals = n_docs - corrupt - duplicates
    for i in range(originals):
        fmt = FORMATS[i % len(FORMATS)]
        if i < long_pdfs:
            fmt, secs = "pdf", _sections(rng, long_pdf_pages, (700, 950))
        else:
            secs = _sections(rng, rng.randint(*sections), section_chars)
        path = write_doc(root / f"doc-{i:05d}.{fmt}", secs)
        corpus.docs.append(Doc(path, expected_chunks(fmt, secs)))
    for j, doc in enumerate(rng.sample(corpus.docs, duplicates)):
        copy = root / "copies" / f"copy-{j:03d}{doc.path.suffix}"
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(doc.path.read_bytes())
        corpus.docs.append(Doc(copy, doc.chunks, duplicate_of=doc.path))
    for k, fmt in zip(range(corrupt), ("pdf", "docx", "pptx", "xlsx", "pdf") * (corrupt // 5 + 1)):
        path = root / "broken" / f"broken-{k}.{fmt}"
        path.parent.mkdir(exist_ok=True)
        # Random bytes, or a truncated real file, which fails deeper inside the parser.
        data = rng.randbytes(2000) if k % 2 == 0 else write_doc(path, _sections(rng, 2, (300, 400))).read_bytes()[:700]
        path.write_bytes(data)
        corpus.corrupt.append(path)
    return corpus


@dataclass(frozen=True)
class Fact:
    question: str
    answer: str
    path: Path


_PROJECTS = """Halcyon Kestrel Meridian Obsidian Tamarind Juniper Lodestar Saffron Cobalt Marigold
Quillon Verdigris Brambling Ptarmigan Sandpiper Wolfram Zephyrine Alderney Castellan Dunmore
Fennimore Galloway Harrowgate Islay Jessamine Kilbride Larkspur Montrose Norwood Orkney Pemberton
Rannoch Selkirk Thistledown Ullapool Vantage Whitmore Yarrow Ashcombe Blackwater""".split()
_FACTS = [
    ("The {p} project secured a budget of {n} million euros for next year.", "What budget did the {p} project secure?"),
    ("Maintenance of the {p} turbine is scheduled every {n} days by the field crew.",
     "How often is the {p} turbine maintained?"),
    ("The {p} warehouse stores {n} thousand pallets of spare parts.", "How many pallets does the {p} warehouse hold?"),
    ("Staff at the {p} office reported {n} safety incidents during the audit.",
     "How many safety incidents were reported at the {p} office?"),
    ("The {p} pipeline carries {n} barrels of crude oil each day.",
     "What daily volume flows through the {p} pipeline?"),
]


def planted_corpus(root: Path, *, facts: int = 40, filler_docs: int = 120, seed: int = 1) -> tuple[Corpus, list[Fact]]:
    """Filler documents plus `facts` documents that each hide one fact among filler sections."""
    rng = random.Random(seed)
    corpus, planted = Corpus(root), []
    for i in range(filler_docs):
        fmt = FORMATS[i % len(FORMATS)]
        secs = _sections(rng, rng.randint(1, 3), (300, 600))
        corpus.docs.append(Doc(write_doc(root / f"filler-{i:04d}.{fmt}", secs), expected_chunks(fmt, secs)))
    for i in range(facts):
        project, number = _PROJECTS[i % len(_PROJECTS)], rng.randint(11, 97)
        statement, question = _FACTS[i % len(_FACTS)]
        fact = statement.format(p=project, n=number)
        secs = _sections(rng, 3, (300, 500))
        at = rng.randrange(len(secs))
        secs[at] = (secs[at][0], f"{paragraph(rng, 150)} {fact} {paragraph(rng, 150)}")
        fmt = ("txt", "md", "html", "docx", "pptx", "pdf", "eml")[i % 7]
        path = write_doc(root / f"fact-{i:03d}.{fmt}", secs)
        corpus.docs.append(Doc(path, expected_chunks(fmt, secs)))
        planted.append(Fact(question.format(p=project), str(number), path))
    return corpus, planted


def small_config(**overrides: object) -> IngestConfig:
    """Small-machine settings for tests: one embedding actor, one chunk per section."""
    values: dict[str, object] = {"embed_actors": 1, "embed_threads": 2, **CHUNKING}
    return IngestConfig(**(values | overrides))
