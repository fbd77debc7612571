"""Every supported format parses offline, from fixtures generated here, into the expected chunks."""

from __future__ import annotations

import random
import sys

import pytest

from memory.ingest.chunking import chunk_elements, pages_of
from memory.ingest.offline import ensure_offline_nlp
from memory.ingest.partition import ParseError, partition_bytes
from tests.ingest.corpus import FORMATS, paragraph, small_config, title, write_doc

LOCATIONS = {"pdf": "page {n}", "pptx": "slide {n}", "xlsx": "sheet Sheet"}


@pytest.fixture(scope="module")
def sections():
    rng = random.Random(7)
    return [(title(rng), paragraph(rng, 400)) for _ in range(3)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_parses_offline_into_one_chunk_per_section(fmt, sections, tmp_path, no_network):
    path = write_doc(tmp_path / f"doc.{fmt}", sections)

    elements = partition_bytes(path.read_bytes(), fmt)
    chunks = chunk_elements(elements, fmt, small_config())

    tables = fmt in ("csv", "xlsx")
    assert len(chunks) == (1 if tables else 3)
    if tables:
        assert chunks[0].element_type in ("Table", "TableChunk")
        assert sections[0][1].split()[3] in chunks[0].text
    else:
        for chunk, (heading, body) in zip(chunks, sections, strict=True):
            assert chunk.text.startswith(heading) and body[:60] in chunk.text
            assert chunk.section == heading
    for n, chunk in enumerate(chunks, start=1):
        expected = LOCATIONS.get(fmt, "section {s!r}" if not tables else "chunk {n}")
        assert chunk.location == expected.format(n=n, s=chunk.section)
    assert "nltk" not in sys.modules  # unstructured no longer needs NLTK data


def test_pdf_pages_are_kept_for_reading(sections, tmp_path):
    elements = partition_bytes(write_doc(tmp_path / "doc.pdf", sections).read_bytes(), "pdf")
    pages = pages_of(elements)
    assert [p.page for p in pages] == [1, 2, 3]
    assert all(heading in p.text for p, (heading, _) in zip(pages, sections, strict=True))


def test_spacy_falls_back_to_a_blank_pipeline_without_downloading(no_network):
    from unstructured.nlp import tokenize

    pipeline = ensure_offline_nlp()

    assert pipeline in ("blank:en+sentencizer", "en_core_web_sm")
    assert tokenize.sent_tokenize("One sentence here. And a second one.") == ["One sentence here.", "And a second one."]


@pytest.mark.parametrize(
    ("fmt", "data", "reason"),
    [
        ("pdf", b"%PDF-1.4 garbage", "PdfStreamError|PdfReadError|EOF"),
        ("docx", b"not a zip file at all", "(?i)zip"),
        ("pptx", b"PK\x03\x04 truncated", "(?i)zip"),
        ("xlsx", b"\x00\x01\x02 junk", "(?i)zip|not a valid xlsx"),
        ("txt", b"", "the file is empty"),
        ("txt", b"\x00\x00\x00\x00binary", "NUL bytes"),
    ],
)
def test_broken_files_raise_with_a_reason(fmt, data, reason):
    import re

    with pytest.raises(Exception) as info:
        partition_bytes(data, fmt)
    assert re.search(reason, f"{type(info.value).__name__}: {info.value}"), info.value


def test_unsupported_extension_names_the_supported_ones():
    with pytest.raises(ParseError, match="unsupported file type 'rtf'.*docx"):
        partition_bytes(b"{\\rtf1 hello}", "rtf")


def test_the_embedding_model_loads_and_runs_offline(no_network):
    from memory.ingest.encoders import SparseEncoder, load_dense_model

    model = load_dense_model(threads=1)
    vectors = model.encode(["quarterly freight costs", "freight costs per quarter", "a recipe for soup"],
                           normalize_embeddings=True)
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    query = SparseEncoder().encode_query("freight costs")
    assert len(query.indices) == 2 and query.values == [1.0, 1.0]
