"""The web API answers exactly what the CLI prints with --json, and refuses bad input with 4xx.

FastAPI's test client (the ``web`` extra and httpx) drives the application in-process; the CLI
runs in-process too (``memplan.cli.main.main``), so every comparison is of two byte strings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from memplan.cli.main import build_parser, main
from memplan.cli.schema import OUTPUT_DESTS
from memplan.web import app as web_app
from memplan.web.bounds import CpuTimeExceeded, cpu_time_limit

HOSTILE = Path(__file__).parent / "data" / "hostile"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(web_app.create_app())


def cli_text(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


# Each case: the API path and body, and the same setup on the command line.
SAME_SETUP = [
    ("params", {"model": "meta-llama/Llama-2-7b-hf"}, ["params", "meta-llama/Llama-2-7b-hf"]),
    ("params", {"model": "deepseek-v3", "weights": "fp8"}, ["params", "deepseek-v3", "--weights", "fp8"]),
    ("params", {"manual": True, "hidden": 1024, "layers": 4, "heads": 8, "vocab": 32000,
                "intermediate": 2816},
     ["params", "--manual", "--hidden", "1024", "--layers", "4", "--heads", "8", "--vocab", "32000",
      "--intermediate", "2816"]),
    ("train", {"model": "llama-3.2-1b", "gpu": "H100"}, ["train", "llama-3.2-1b", "--gpu", "H100"]),
    ("train", {"model": "qwen2.5-7b", "lora-rank": 16, "lora-targets": "q_proj,v_proj",
               "gpu": "L40S", "batch": 2, "seq": 4096, "checkpointing": "full"},
     ["train", "qwen2.5-7b", "--lora-rank", "16", "--lora-targets", "q_proj,v_proj",
      "--gpu", "L40S", "--batch", "2", "--seq", "4096", "--checkpointing", "full"]),
    ("train", {"model": "llama-3.1-8b", "qlora": True, "lora-rank": "16", "gpu-memory": "24GiB"},
     ["train", "llama-3.1-8b", "--qlora", "--lora-rank", "16", "--gpu-memory", "24GiB"]),
    ("infer", {"model": "qwen2.5-7b", "gpu": "L40S", "weights": "awq-int4", "prompt-len": 2048},
     ["infer", "qwen2.5-7b", "--gpu", "L40S", "--weights", "awq-int4", "--prompt-len", "2048"]),
    ("serve-capacity", {"model": "phi-3-mini", "gpu": "H100", "max-model-len": 2048},
     ["serve-capacity", "phi-3-mini", "--gpu", "H100", "--max-model-len", "2048"]),
    ("time", {"model": "gpt2-xl", "gpu": "A100", "steps": 400000, "batch": 512, "seq": 1024,
              "price-per-gpu-hour": 2.5, "gpus": 64},
     ["time", "gpt2-xl", "--gpu", "A100", "--steps", "400000", "--batch", "512", "--seq", "1024",
      "--price-per-gpu-hour", "2.5", "--gpus", "64"]),
    ("time", {"model": "llama-3.1-8b", "gpu": "H100", "tokens": "15e12", "seq": 8192},
     ["time", "llama-3.1-8b", "--gpu", "H100", "--tokens", "15e12", "--seq", "8192"]),
]  # fmt: skip


@pytest.mark.parametrize(("command", "body", "argv"), SAME_SETUP)
def test_every_endpoint_returns_the_cli_json_byte_for_byte(
    client: TestClient,
    capsys: pytest.CaptureFixture[str],
    command: str,
    body: dict[str, Any],
    argv: list[str],
) -> None:
    response = client.post(f"/api/{command}", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.content.decode() == cli_text(capsys, [*argv, "--json"])


def test_sweep_returns_the_cli_json_byte_for_byte(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {"model": "llama-3.2-1b", "job": "train", "over": "seq=512..65536", "gpu": "A100"}
    response = client.post("/api/sweep", json=body)
    assert response.status_code == 200, response.text
    argv = ["sweep", "llama-3.2-1b", "--job", "train", "--over", "seq=512..65536", "--gpu", "A100"]
    assert response.content.decode() == cli_text(capsys, [*argv, "--json"])


SEARCH_SECONDS = re.compile(r'^  "seconds": [0-9.e+-]+,$', re.M)
"""The search's own wall time: the one line of ``memplan plan --json`` that differs per run."""


def test_plan_returns_the_cli_json_byte_for_byte(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan search's answer, every byte but its wall time (``seconds``) the CLI's."""
    body = {"model": "Qwen/Qwen2.5-0.5B", "gpus": 4, "gpu": "H100", "seq": 1024,
            "global-batch": 16, "top": 3, "only": "fsdp,tp,recompute", "tokens": "1e9",
            "price-per-gpu-hour": 2.5}  # fmt: skip
    response = client.post("/api/plan", json=body)
    assert response.status_code == 200, response.text
    argv = ["plan", "Qwen/Qwen2.5-0.5B", "--gpus", "4", "--gpu", "H100", "--seq", "1024",
            "--global-batch", "16", "--top", "3", "--only", "fsdp,tp,recompute", "--tokens",
            "1e9", "--price-per-gpu-hour", "2.5", "--json"]  # fmt: skip
    cli = cli_text(capsys, argv)
    web = response.content.decode()
    assert len(SEARCH_SECONDS.findall(web)) == len(SEARCH_SECONDS.findall(cli)) == 1
    assert SEARCH_SECONDS.sub("", web) == SEARCH_SECONDS.sub("", cli)
    data = json.loads(web)
    assert len(data["plans"]) == 3 and data["plans"][0]["cost_usd"] > 0
    assert len(data["feasible_points"]["rank"]) == data["plans_feasible"] > 20


@pytest.mark.parametrize(("path", "argv"), [("/api/models", ["models"]), ("/api/gpus", ["gpus"])])
def test_catalog_listings_are_the_cli_json(
    client: TestClient, capsys: pytest.CaptureFixture[str], path: str, argv: list[str]
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.content.decode() == cli_text(capsys, [*argv, "--json"])


def test_a_pasted_config_is_the_same_as_the_file(
    client: TestClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The page sends a config.json's text; the CLI reads the file: the same report."""
    config = {
        "_name_or_path": "my-org/tiny-llama",
        "model_type": "llama",
        "hidden_size": 512,
        "intermediate_size": 1376,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "torch_dtype": "bfloat16",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    body = {"config": path.read_text(), "batch": 4, "seq": 1024, "gpu": "L4"}
    response = client.post("/api/train", json=body)
    assert response.status_code == 200, response.text
    argv = ["train", str(path), "--batch", "4", "--seq", "1024", "--gpu", "L4", "--json"]
    assert response.content.decode() == cli_text(capsys, argv)


def error_of(response: Any, status: int = 400) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    return str(message)


def test_bad_configs_get_the_resolvers_one_line_error(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hostile corpus, pasted: the error the CLI gives for the file, on one line."""
    from test_hostile_inputs import CORPUS_ERRORS

    checked = 0
    for name, phrase in sorted(CORPUS_ERRORS.items()):
        path = HOSTILE / name
        if not path.is_file():
            continue  # folders and safetensors headers: the page takes a config.json only
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # the browser reads a file as UTF-8 text before sending it
        body = {"config": text, "config_name": name, "seq": 64}
        message = error_of(client.post("/api/train", json=body))
        assert message.startswith("memplan: error: ") and phrase in message, (name, message)
        assert main(["train", str(path), "--seq", "64"]) == 2
        cli = capsys.readouterr().err.strip()
        assert message in (
            cli.replace(str(path), name),
            cli.replace(str(path), f"the pasted {name}"),
        )
        checked += 1
    assert checked >= 30


@pytest.mark.parametrize(
    ("path", "body", "phrase"),
    [
        ("/api/train", {"model": "no-such-model"}, "unknown model 'no-such-model'"),
        (
            "/api/train",
            {"model": "llama-3.2-1b", "batch": "many"},
            "argument --batch: expected a positive integer, got 'many' (see `memplan train --help`)",
        ),
        ("/api/train", {"model": "llama-3.2-1b", "batch": 2**50}, "batch"),
        ("/api/infer", {"model": "gpt2", "prompt-len": "1" + "0" * 400}, "--prompt-len"),
        ("/api/train", {"model": "llama-3.2-1b", "gpu-memory": "80 parsecs"}, "80 parsecs"),
        ("/api/train", {"model": "llama-3.2-1b", "gpu": "RTX-9999"}, "RTX-9999"),
        ("/api/train", {"model": "llama-3.2-1b", "precision": "fp3"}, "unknown precision 'fp3'"),
        ("/api/train", {"model": "llama-3.2-1b", "no-such-flag": 1}, "has no field 'no-such-flag'"),
        ("/api/train", {"model": "llama-3.2-1b", "qlora": "yes"}, "true or false"),
        ("/api/train", {"model": "llama-3.2-1b", "batch": True}, "takes a value"),
        ("/api/train", {"model": "--help"}, "must not start with '-'"),
        ("/api/train", {"model": "llama-3.2-1b", "json": True}, "has no field 'json'"),
        ("/api/time", {"model": "gpt2", "gpu": "A100", "steps": 1, "tokens": 2}, "not allowed"),
        ("/api/time", {"model": "gpt2", "gpu": "A100"}, "give the run length"),
        ("/api/serve-capacity", {"model": "gpt2"}, "needs a GPU"),
        ("/api/train", {"config": {"model_type": "llama"}}, "text of a config.json"),
        ("/api/sweep", {"model": "gpt2", "over": "batch=1..1000:1"}, "at most 256"),
        ("/api/sweep", {"model": "gpt2", "over": "batch"}, "FLAG=RANGE"),
        ("/api/sweep", {"model": "gpt2", "over": "warp=1..4"}, "no job has a flag --warp"),
        ("/api/sweep", {"model": "gpt2", "job": "trace", "over": "batch=1..4"}, "job must be"),
        ("/api/plan", {"model": "gpt2", "gpu": "H100", "global-batch": 8}, "needs a cluster"),
        ("/api/plan", {"model": "gpt2", "gpus": 8, "global-batch": 8}, "needs a GPU"),
        (
            "/api/plan",
            {"model": "gpt2", "gpus": 8, "gpu": "H100", "global-batch": 8, "only": "warp"},
            "--only: unknown warp",
        ),
        (
            "/api/plan",
            {"model": "gpt2", "gpus": 8, "gpu": "H100", "global-batch": 8, "jobs": 2},
            "one process",
        ),
    ],
)
def test_bad_inputs_get_400_and_one_line(
    client: TestClient, path: str, body: dict[str, Any], phrase: str
) -> None:
    message = error_of(client.post(path, json=body))
    assert message.startswith("memplan"), message
    assert phrase in message, message


def test_malformed_and_oversized_bodies(client: TestClient) -> None:
    assert "not valid JSON" in error_of(client.post("/api/train", content=b"{model: gpt2"))
    assert "JSON object" in error_of(client.post("/api/train", content=b"[1, 2]"))
    assert "nested too deeply" in error_of(client.post("/api/train", content=b"[" * 100_000))
    big = json.dumps({"model": "gpt2", "config": "x" * (1 << 20)})
    assert "larger than 1024 KiB" in error_of(client.post("/api/train", content=big), 413)


def test_no_trace_from_the_web(client: TestClient) -> None:
    """The trace engine has no endpoint, and a model type only torch could build is an error."""
    assert client.post("/api/trace", json={"model": "gpt2"}).status_code == 404
    assert client.post("/api/compare", json={"model": "gpt2"}).status_code == 404
    config = json.dumps({"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2})
    message = error_of(client.post("/api/params", json={"config": config}))
    assert message.startswith("memplan: error: ") and "bert" in message


def test_the_schema_is_the_parsers(client: TestClient) -> None:
    """Every flag of every command's parser is a field of the page and the API: a flag added
    to the CLI appears with no web change."""
    schema = client.get("/api/schema").json()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in web_app.WEB_COMMANDS:
        flags = {
            (a.option_strings[0][2:] if a.option_strings else a.dest)
            for a in sub.choices[command]._actions
            if a.dest not in OUTPUT_DESTS
        }
        fields = schema["commands"][command]["fields"]
        assert {f["name"] for f in fields} == flags
    batch = next(f for f in schema["commands"]["train"]["fields"] if f["name"] == "batch")
    assert batch["default"] == 1 and batch["kind"] == "integer" and batch["flag"] == "--batch"
    cache = next(f for f in schema["commands"]["infer"]["fields"] if f["name"] == "cache")
    assert cache["kind"] == "choice" and cache["choices"] == ["dynamic", "static"]
    assert schema["sweep"]["max_points"] == 256
    assert schema["limits"]["max_body_bytes"] == 1 << 20


def test_openapi_and_docs_work_offline(client: TestClient) -> None:
    openapi = client.get("/openapi.json").json()
    for command in (*web_app.WEB_COMMANDS, "sweep"):
        assert f"/api/{command}" in openapi["paths"]
    train = openapi["paths"]["/api/train"]["post"]["requestBody"]["content"]["application/json"]
    assert train["schema"]["properties"]["batch"]["default"] == 1
    docs = client.get("/docs").text
    assert "/static/swagger-ui-bundle.js" in docs and "cdn." not in docs
    assert client.get("/static/swagger-ui-bundle.js").status_code == 200


def test_the_page_and_plotly_come_from_this_machine(client: TestClient) -> None:
    page = client.get("/").text
    assert '<script src="/static/plotly.min.js">' in page
    assert "http://" not in page and "https://" not in page
    plotly = client.get("/static/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    assert b"plotly.js" in plotly.content[:1000]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/..%2Fapp.py").status_code == 404


def test_cpu_time_limit_interrupts_the_computation() -> None:
    start = time.process_time()
    with (
        pytest.raises(CpuTimeExceeded, match=r"more than 0\.05 s of CPU time"),
        cpu_time_limit(0.05),
    ):
        while time.process_time() - start < 5:
            pass
    assert time.process_time() - start < 1.0


def test_every_request_is_held_to_its_cpu_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app in the main thread (as under uvicorn), with a budget far below what a sweep
    of 256 training estimates takes (about 0.3 s of CPU): the timer stops it."""
    httpx = pytest.importorskip("httpx")
    monkeypatch.setattr(web_app, "SWEEP_CPU_SECONDS", 0.02)
    app = web_app.create_app()
    body = {"model": "gpt2", "seq": 512, "over": "batch=1..256:1", "gpu": "H100"}

    async def ask() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post("/api/sweep", json=body)

    start = time.process_time()
    message = error_of(asyncio.run(ask()))
    assert message == (
        "memplan: error: the request used more than 0.02 s of CPU time; ask for fewer points"
    )
    assert time.process_time() - start < 0.3


def test_a_plan_search_is_held_to_its_cpu_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A search has its own budget (far above a report's) and says how to make it smaller."""
    httpx = pytest.importorskip("httpx")
    assert web_app.PLAN_CPU_SECONDS > web_app.REPORT_CPU_SECONDS
    # far below any search's CPU time, warm caches included (0.02 s was not, once a worker
    # had run other plan searches before this test)
    monkeypatch.setattr(web_app, "PLAN_CPU_SECONDS", 0.0001)
    app = web_app.create_app()
    body = {"model": "Qwen/Qwen2.5-0.5B", "gpus": 8, "gpu": "H100", "global-batch": 64}

    async def ask() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post("/api/plan", json=body)

    message = error_of(asyncio.run(ask()))
    assert message.startswith("memplan: error: the request used more than 0.0001 s of CPU time")
    assert "narrow the search (only, max-tp" in message
