"""Decoded-image bound (issue #10): an image in a Predict's string input whose header declares more
than ``--max_image_pixels`` pixels is refused before the model decodes it, over REST (``b64``) and
gRPC (``string_val``) alike; small images and strings that are not images pass untouched.

The test model decodes like the demo ResNet: ``serving_default`` takes ``image_bytes`` (DT_STRING)
and answers each image's decoded pixel count (``tf.io.decode_image`` in the graph); ``length``
answers the byte length of ``text`` without decoding anything.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from modelserver import images
from modelserver.errors import Code, ServingError
from modelserver.images import ImageSize, check_image_inputs, image_size

from .conftest import RunningServer, start_server

DT_STRING = 7


def _build_decoder(path: Path) -> None:
    import tensorflow as tf

    class Decoder(tf.Module):  # type: ignore[misc]
        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
        )
        def pixels(self, image_bytes: Any) -> Any:
            def count(data: Any) -> Any:
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.cast(tf.reduce_prod(tf.shape(image)[:2]), tf.int64)

            return {"pixels": tf.map_fn(count, image_bytes, fn_output_signature=tf.int64)}

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="text")]
        )
        def length(self, text: Any) -> Any:
            return {"length": tf.cast(tf.strings.length(text), tf.int64)}

    module = Decoder()
    tf.saved_model.save(
        module, str(path), signatures={"serving_default": module.pixels, "length": module.length}
    )


@pytest.fixture(scope="module")
def decoder_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("decoder")
    _build_decoder(base / "1")
    return base


def _serve(base: Path, *flags: str) -> RunningServer:
    return start_server("--model_name=img", f"--model_base_path={base}", *flags)


@pytest.fixture(scope="module")
def served(decoder_base: Path) -> Iterator[RunningServer]:
    server = _serve(decoder_base)
    yield server
    server.stop()


def jpeg_header(width: int, height: int) -> bytes:
    """A JPEG's first bytes up to its frame header (SOI, APP0 JFIF, SOF0 with three components):
    what a decoder reads to size its output, without any pixel data."""
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return (
        b"\xff\xd8"
        + b"\xff\xe0"
        + struct.pack(">H", 2 + len(app0))
        + app0
        + b"\xff\xc0"
        + struct.pack(">H", 2 + len(sof0))
        + sof0
        + b"\xff\xd9"
    )


def encoded(width: int, height: int, kind: str = "JPEG", **options: Any) -> bytes:
    """A real image file of that size, encoded by Pillow."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(out, kind, **options)
    return out.getvalue()


def rest_predict(
    server: RunningServer, data: bytes, *, signature: str = "", alias: str = "image_bytes"
) -> tuple[int, Any]:
    body: dict[str, Any] = {"instances": [{alias: {"b64": base64.b64encode(data).decode()}}]}
    if signature:
        body["signature_name"] = signature
    return server.post_json("/v1/models/img:predict", body)


def grpc_predict(
    server: RunningServer, data: bytes, *, signature: str = "", alias: str = "image_bytes"
) -> tuple[str, Any]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "img"
    if signature:
        request.model_spec.signature_name = signature
    tensor = request.inputs[alias]
    tensor.dtype = DT_STRING
    tensor.tensor_shape.dim.add().size = 1
    tensor.string_val.append(data)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    try:
        response = stub.Predict(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    output = response.outputs["pixels" if not signature else "length"]
    return "OK", list(output.int64_val)


def _assert_bomb_message(message: str) -> None:
    for part in ("image_bytes", "JPEG image of 8000x8000", "64000000", "50000000"):
        assert part in message, message
    assert "--max_image_pixels" in message, message


def test_rest_refuses_an_8000x8000_jpeg_header(served: RunningServer) -> None:
    """REST b64 of an 8000x8000 JPEG is a 400 naming the input, the size and the limit."""
    status, body = rest_predict(served, jpeg_header(8000, 8000))
    assert status == 400, body
    _assert_bomb_message(body["error"])


def test_grpc_refuses_an_8000x8000_jpeg_header(served: RunningServer) -> None:
    """gRPC string_val of an 8000x8000 JPEG is INVALID_ARGUMENT with the same message."""
    code, details = grpc_predict(served, jpeg_header(8000, 8000))
    assert code == "INVALID_ARGUMENT", details
    _assert_bomb_message(details)


def test_small_jpeg_is_decoded_by_the_model(served: RunningServer) -> None:
    """A normal 64x48 JPEG passes the check and the model decodes it (REST and gRPC)."""
    data = encoded(64, 48)
    assert rest_predict(served, data) == (200, {"predictions": [64 * 48]})
    assert grpc_predict(served, data) == ("OK", [64 * 48])


def test_strings_that_are_not_images_pass(served: RunningServer) -> None:
    """Text (even starting like a BMP's 'BM') reaches the model unchanged, REST and gRPC."""
    text = b"BMW i3, 2014: " + b"x" * 200
    status, body = rest_predict(served, text, signature="length", alias="text")
    assert (status, body) == (200, {"predictions": [len(text)]})
    assert grpc_predict(served, text, signature="length", alias="text") == ("OK", [len(text)])


def test_the_flag_sets_the_limit(decoder_base: Path) -> None:
    """--max_image_pixels=1000 refuses a real 50x50 JPEG (2500 pixels) and lets 20x20 through."""
    server = _serve(decoder_base, "--max_image_pixels=1000")
    try:
        status, body = rest_predict(server, encoded(50, 50))
        assert status == 400, body
        assert "JPEG image of 50x50" in body["error"] and "limit of 1000" in body["error"]
        assert rest_predict(server, encoded(20, 20)) == (200, {"predictions": [400]})
    finally:
        server.stop()


def test_zero_turns_the_check_off(decoder_base: Path) -> None:
    """--max_image_pixels=0: an 8000x8000 header reaches the (non-decoding) model untouched."""
    header = jpeg_header(8000, 8000)
    server = _serve(decoder_base, "--max_image_pixels=0")
    try:
        assert grpc_predict(server, header, signature="length", alias="text") == (
            "OK",
            [len(header)],
        )
    finally:
        server.stop()


def test_the_check_applies_to_every_string_input(served: RunningServer) -> None:
    """The bound does not depend on the model decoding: the same header to ``length`` is refused
    by default (which is what makes the 0-turns-it-off test meaningful)."""
    code, details = grpc_predict(served, jpeg_header(8000, 8000), signature="length", alias="text")
    assert code == "INVALID_ARGUMENT" and "Input text element 0" in details, details


def test_negative_limit_is_refused_at_start(decoder_base: Path) -> None:
    """A negative --max_image_pixels stops the start with a message saying what to give."""
    with pytest.raises(ServingError, match=r"--max_image_pixels=-1 is negative") as caught:
        _serve(decoder_base, "--max_image_pixels=-1")
    assert caught.value.code == Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (encoded(123, 45, "JPEG"), ImageSize("JPEG", 123, 45)),
        (encoded(123, 45, "JPEG", progressive=True), ImageSize("JPEG", 123, 45)),
        (encoded(123, 45, "PNG"), ImageSize("PNG", 123, 45)),
        (encoded(123, 45, "GIF"), ImageSize("GIF", 123, 45)),
        (encoded(123, 45, "BMP"), ImageSize("BMP", 123, 45)),
        (encoded(123, 45, "WEBP"), ImageSize("WebP", 123, 45)),
        (encoded(123, 45, "WEBP", lossless=True), ImageSize("WebP", 123, 45)),
        (jpeg_header(8000, 8000), ImageSize("JPEG", 8000, 8000)),
        (b"\xff\xd8 not a jpeg after all", None),
        (b"plain text", None),
        (b"BMW i3, 2014: a car, not a bitmap", None),
    ],
)
def test_image_size_reads_headers(data: bytes, expected: ImageSize | None) -> None:
    """Each format's header gives the size its decoder allocates; other bytes give None."""
    assert image_size(data) == expected


@pytest.mark.parametrize("kind", ["GIF", "WEBP"])
def test_animations_count_every_frame(kind: str) -> None:
    """An animated GIF or WebP declares width x height x frames pixels."""
    frames = [Image.new("RGB", (30, 20), (40 * i, 0, 0)) for i in range(5)]
    out = io.BytesIO()
    frames[0].save(out, kind, save_all=True, append_images=frames[1:])
    size = image_size(out.getvalue())
    assert size is not None and (size.width, size.height, size.frames) == (30, 20, 5)
    assert size.pixels == 3000


def test_header_reading_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JPEG with more segments before its frame header than the step budget is refused
    (a crafted file cannot make the check itself slow)."""
    monkeypatch.setattr(images, "MAX_HEADER_STEPS", 100)
    comments = b"\xff\xfe\x00\x02" * 200
    data = b"\xff\xd8" + comments + jpeg_header(10, 10)[2:]
    with pytest.raises(ServingError) as caught:
        check_image_inputs({"image_bytes": [data]}, 1_000_000)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert "more than 100 segments or blocks" in caught.value.message
    # Under the budget the same kind of file is read to its frame header.
    assert image_size(b"\xff\xd8" + comments[:200] + jpeg_header(10, 10)[2:]) == ImageSize(
        "JPEG", 10, 10
    )
