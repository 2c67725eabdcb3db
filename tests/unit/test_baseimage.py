"""Choosing the Debian mirror for the debootstrapped base image from the host's apt sources."""

from __future__ import annotations

import pytest

from tfstack.build.baseimage import choose_mirror, parse_apt_sources
from tfstack.errors import BuildError

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """\
# a comment
deb [signed-by=/usr/share/keyrings/x.gpg] http://other.example/debian/ bookworm main contrib
deb http://other.example/debian-security bookworm-security main
"""


def test_deb822_sources_give_the_release_suite_mirror() -> None:
    """The plain suite's main component wins over -security and -updates entries."""
    sources = parse_apt_sources([DEB822])
    assert choose_mirror(sources, "bookworm") == "http://mirror.example/debian"


def test_one_line_sources_with_options_are_parsed() -> None:
    sources = parse_apt_sources([ONE_LINE])
    assert [s.uri for s in sources] == [
        "http://other.example/debian/",
        "http://other.example/debian-security",
    ]
    assert choose_mirror(sources, "bookworm") == "http://other.example/debian"


def test_disabled_stanzas_are_ignored() -> None:
    disabled = DEB822.replace(
        "Types: deb\nURIs: http://mirror.example/debian\n",
        "Types: deb\nEnabled: no\nURIs: http://mirror.example/debian\n",
        1,
    )
    with pytest.raises(BuildError, match="no apt source serves 'bookworm main'"):
        choose_mirror(parse_apt_sources([disabled]), "bookworm")


def test_missing_suite_names_the_fix() -> None:
    """A host without a source for the suite is told how to fix it, not given a traceback."""
    with pytest.raises(BuildError) as info:
        choose_mirror(parse_apt_sources([DEB822]), "trixie")
    assert "debian:trixie-slim" in str(info.value)
