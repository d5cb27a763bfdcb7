"""Caption backends: the offline grammar, and the OpenAI-compatible client against a loopback server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clipfed.data.cifar import CIFAR10_CLASSES
from clipfed.data_synth.captions import (
    CaptionReplyError,
    build_captions,
    parse_caption_reply,
)
from clipfed.data_synth.config import CaptionConfig, OpenAICaptionConfig


def test_template_captions_are_deterministic_distinct_and_plentiful() -> None:
    cfg = CaptionConfig(per_class=60)
    first = build_captions(CIFAR10_CLASSES, cfg, seed=0)
    assert first == build_captions(CIFAR10_CLASSES, cfg, seed=0)
    assert first != build_captions(CIFAR10_CLASSES, cfg, seed=1)
    for captions in first.values():
        assert len(set(captions)) == 60
        assert all(caption.endswith(".") for caption in captions)
    assert any("car" in c for c in first[1]) and any("cat" in c for c in first[3])


def test_template_refuses_more_captions_than_the_grammar_has() -> None:
    with pytest.raises(ValueError, match="per_class=100000"):
        build_captions(["cat"], CaptionConfig(per_class=100000), seed=0)


def test_reply_validation() -> None:
    good = json.dumps(["A tabby cat on a sofa.", "A black cat in the snow.", "a cat"])
    assert parse_caption_reply(good, "cat", 2) == ["A tabby cat on a sofa.", "A black cat in the snow."]
    fenced = "```json\n" + json.dumps(["A red car at night.", "An old car parked outside."]) + "\n```"
    assert len(parse_caption_reply(fenced, "automobile", 2)) == 2  # 'car' counts for automobile
    with pytest.raises(CaptionReplyError, match="not JSON"):
        parse_caption_reply("Sure! Here are captions:", "cat", 1)
    with pytest.raises(CaptionReplyError, match="only 1 valid"):
        parse_caption_reply(json.dumps(["A dog on grass.", "A photo of a cat outside."]), "cat", 2)


class FakeChatServer(ThreadingHTTPServer):
    """Implements POST /v1/chat/completions; answers with canned captions (or garbage first)."""

    def __init__(self, garbage_first: int = 0) -> None:
        self.requests: list[dict] = []
        self.garbage_left = garbage_first
        super().__init__(("127.0.0.1", 0), ChatHandler)


class ChatHandler(BaseHTTPRequestHandler):
    server: FakeChatServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body})
        prompt = body["messages"][0]["content"]
        name = prompt.split("photographs of a ")[1].split(".")[0]
        if self.server.garbage_left > 0:
            self.server.garbage_left -= 1
            content = "I cannot do that."
        else:
            content = json.dumps([f"A photo of a {name} number {i}, seen from the side." for i in range(5)])
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": content}}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def chat_server(request: pytest.FixtureRequest) -> Iterator[FakeChatServer]:
    server = FakeChatServer(garbage_first=getattr(request, "param", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def openai_cfg(server: FakeChatServer, retries: int = 2) -> CaptionConfig:
    host, port = server.server_address[:2]
    return CaptionConfig(backend="openai", per_class=3, openai=OpenAICaptionConfig(
        base_url=f"http://{host}:{port}/v1", model="tiny-vlm", timeout=10, retries=retries))


def test_openai_backend_uses_the_real_client_and_caches(chat_server: FakeChatServer) -> None:
    cfg = openai_cfg(chat_server)
    captions = build_captions(["cat", "dog"], cfg, seed=0)
    assert captions[0][0] == "A photo of a cat number 0, seen from the side." and len(captions[1]) == 3
    assert [r["path"] for r in chat_server.requests] == ["/v1/chat/completions"] * 2
    assert chat_server.requests[0]["body"]["model"] == "tiny-vlm"
    assert build_captions(["cat", "dog"], cfg, seed=0) == captions
    assert len(chat_server.requests) == 2, "a cached answer was asked for again"


@pytest.mark.parametrize("chat_server", [1], indirect=True)
def test_openai_backend_retries_an_invalid_reply(chat_server: FakeChatServer) -> None:
    assert len(build_captions(["frog"], openai_cfg(chat_server), seed=0)[0]) == 3
    assert len(chat_server.requests) == 2


@pytest.mark.parametrize("chat_server", [10], indirect=True)
def test_openai_backend_gives_up_with_a_clear_error(chat_server: FakeChatServer) -> None:
    with pytest.raises(CaptionReplyError, match="no usable captions for 'frog' after 2 tries"):
        build_captions(["frog"], openai_cfg(chat_server, retries=1), seed=0)
