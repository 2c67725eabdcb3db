"""Which model images a deploy prunes on this machine (pure selection, no engine)."""

from __future__ import annotations

from tfstack.build.modelimage import (
    LISTING_FORMAT,
    LocalImage,
    ModelImagePlan,
    model_image_tag,
    parse_image_listing,
    same_repository,
    stale_model_images,
)

REPO = "tfstack/models-demo"
PUSHED = f"127.0.0.1:5000/{REPO}"


def _image(repository: str, tag: str, created: str) -> LocalImage:
    return LocalImage(repository, tag, f"id-{tag}", f"2026-12-03 09:{created} +0000 UTC")


def test_keeps_the_current_and_the_newest_previous_tag_under_both_names() -> None:
    """Four revisions, each local and pushed: the two oldest go (both names), current and the
    one before it stay, whatever order the engine lists them in."""
    images = [
        _image(name, tag, created)
        for tag, created in (("aaaa", "00:00"), ("bbbb", "10:00"), ("cccc", "20:00"))
        for name in (REPO, PUSHED)
    ]
    images += [_image(REPO, "dddd", "30:00"), _image(PUSHED, "dddd", "30:00")]
    stale = stale_model_images(reversed(images), repository=REPO, current_tag="dddd")
    assert stale == sorted([f"{REPO}:aaaa", f"{PUSHED}:aaaa", f"{REPO}:bbbb", f"{PUSHED}:bbbb"])


def test_the_current_tag_is_kept_even_when_it_is_not_the_newest() -> None:
    """A rollback deploys an older revision: it stays, and so does the newest other one."""
    images = [_image(REPO, "old", "00:00"), _image(REPO, "mid", "10:00")]
    images.append(_image(REPO, "new", "20:00"))
    assert stale_model_images(images, repository=REPO, current_tag="old") == [f"{REPO}:mid"]
    assert stale_model_images(images, repository=REPO, current_tag="old", keep_previous=0) == [
        f"{REPO}:mid",
        f"{REPO}:new",
    ]


def test_other_projects_lookalikes_and_untagged_images_are_never_selected() -> None:
    """Another project's model images (even a name sharing the prefix), a repository that only
    ends the same way, and dangling images stay."""
    images = [
        _image("tfstack/models-demo-big", "aaaa", "00:00"),
        _image("127.0.0.1:5000/tfstack/models-demo-big", "aaaa", "00:00"),
        _image(f"someone/{REPO}", "bbbb", "00:00"),
        _image(REPO, "<none>", "00:00"),
        _image(REPO, "cccc", "05:00"),
        _image(REPO, "dddd", "10:00"),
        _image(REPO, "eeee", "20:00"),
    ]
    assert stale_model_images(images, repository=REPO, current_tag="eeee") == [f"{REPO}:cccc"]


def test_same_repository_accepts_only_registry_hosts_as_prefix() -> None:
    assert same_repository(REPO, REPO)
    assert same_repository(PUSHED, REPO)
    assert same_repository(f"registry.example.org/{REPO}", REPO)
    assert same_repository(f"localhost/{REPO}", REPO)
    assert not same_repository(f"someone/{REPO}", REPO)
    assert not same_repository(f"{REPO}-big", REPO)
    assert not same_repository(f"127.0.0.1:5000/x/{REPO}", REPO)


def test_listing_lines_parse_and_the_plan_tags_by_digest() -> None:
    """The CLI listing's tab-separated lines; odd lines are skipped. The plan's tag is the
    digest's first 16 hex digits, the one the pruning keeps."""
    assert LISTING_FORMAT.count("\t") == 3
    text = f"{REPO}\tabcd\tsha256:1\t2026-12-03 09:00:00 +0000 UTC\nnoise\n"
    assert parse_image_listing(text) == [
        LocalImage(REPO, "abcd", "sha256:1", "2026-12-03 09:00:00 +0000 UTC")
    ]
    digest = "0123456789abcdef" * 4
    plan = ModelImagePlan("base", REPO, digest, (), "")
    assert plan.tag == model_image_tag(digest) == "0123456789abcdef"
    assert 'org.tfstack.role="model-image"' in plan.dockerfile()
