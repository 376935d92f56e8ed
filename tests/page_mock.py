#!/usr/bin/env python3
"""A stand-in for `ctorch train --metrics-port` (tests/test_page.c, docs/live-page.md):
serves the live page and canned /metrics, /api/run and /api/history, with the python3
standard library only. Every /metrics answer moves the run 7 steps on, and the figures it
served are appended to --log as one JSON line, so that a test can check the page's points
against what the page was given.

  page_mock.py --page src/monitor/page.html --port-file F --log L [--token T] [--gpu]
               [--die-after N]

--die-after N: after the Nth /metrics answer the server exits (the page must then say
"disconnected" and keep its charts)."""
import argparse
import http.server
import json
import math
import os
import socketserver
import sys
import threading
import time

HISTORY_STEPS = (16, 32, 48)
STEPS_PER_SCRAPE = 7
PLANNED = 480


def figures(step):
    """The run's figures at a step: deterministic, so that the log says all."""
    return {
        "steps": step,
        "epoch": step // 16 + 1,
        "loss": round(2.3 * math.exp(-step / 150.0) + 0.2, 6),
        "train_accuracy": round(0.1 + 0.6 * (1 - math.exp(-step / 120.0)), 6),
        "test_accuracy": round(0.1 + 0.55 * (1 - math.exp(-(step // 16 * 16) / 120.0)), 6),
        "lr": round(0.1 * 0.5 * (1 + math.cos(math.pi * step / PLANNED)), 8),
        "images_per_second": round(1500 + 40 * math.sin(step / 10.0), 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--page", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--token")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--die-after", type=int, default=0)
    a = ap.parse_args()
    with open(a.page, "rb") as f:
        page = f.read()
    state = {"step": HISTORY_STEPS[-1], "scrapes": 0}
    lock = threading.Lock()
    started = time.time() - 60

    def metrics_text():
        state["step"] += STEPS_PER_SCRAPE
        state["scrapes"] += 1
        fg = figures(state["step"])
        lab = 'run="mock-run",model="simple_cnn",rank="0"'
        out = []

        def g(name, value, kind="gauge", extra=""):
            out.append("# HELP %s %s\n# TYPE %s %s\n" % (name, name.replace("_", " "), name, kind))
            out.append("%s{%s%s} %s\n" % (name, lab, extra, value))

        g("ctorch_train_loss", fg["loss"])
        g("ctorch_train_accuracy", fg["train_accuracy"])
        g("ctorch_test_accuracy", fg["test_accuracy"])
        g("ctorch_learning_rate", fg["lr"])
        g("ctorch_epoch", fg["epoch"])
        g("ctorch_steps_total", fg["steps"], "counter")
        g("ctorch_images_total", fg["steps"] * 64, "counter")
        g("ctorch_images_per_second", fg["images_per_second"])
        g("ctorch_planned_steps", PLANNED)
        g("ctorch_run_active", 1)
        out.append("# HELP ctorch_step_seconds step time\n# TYPE ctorch_step_seconds histogram\n")
        for le in ("0.01", "0.1", "1", "+Inf"):
            out.append('ctorch_step_seconds_bucket{%s,le="%s"} %d\n' % (lab, le, 0 if le == "0.01" else fg["steps"]))
        out.append("ctorch_step_seconds_sum{%s} %.3f\n" % (lab, fg["steps"] * 0.042))
        out.append("ctorch_step_seconds_count{%s} %d\n" % (lab, fg["steps"]))
        out.append('ctorch_build_info{version="0.1.0",commit="mock \\"quoted\\" \\\\ text"} 1\n')
        if a.gpu:
            for gpu in (0, 1):
                x = ',gpu="%d"' % gpu
                g("ctorch_gpu_utilization_ratio", round(0.55 + 0.3 * gpu + 0.05 * math.sin(fg["steps"]), 4), extra=x)
                g("ctorch_gpu_memory_used_bytes", (6 + 4 * gpu) * 2**30, extra=x)
                g("ctorch_gpu_memory_total_bytes", 80 * 2**30, extra=x)
                g("ctorch_gpu_temperature_celsius", 52 + 6 * gpu, extra=x)
        with open(a.log, "a") as f:
            f.write(json.dumps(fg) + "\n")
        return "".join(out).encode()

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, code, ctype, body):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/":
                return self.send(200, "text/html; charset=utf-8", page)
            if a.token and self.headers.get("Authorization") != "Bearer " + a.token:
                return self.send(401, "text/plain", b"a bearer token is required\n")
            if path == "/metrics":
                with lock:
                    body = metrics_text()
                    n = state["scrapes"]
                self.send(200, "text/plain; version=0.0.4; charset=utf-8", body)
                if a.die_after and n >= a.die_after:
                    self.wfile.flush()
                    os._exit(0)
                return
            if path == "/api/run":
                run = {"run": "mock-run", "model": "simple_cnn", "dataset": "cifar10", "rank": 0,
                       "world_size": 1, "state": "training", "epochs": 30, "steps_per_epoch": 16,
                       "planned_steps": PLANNED, "started_unix": started,
                       "config": {"model": "simple_cnn", "dataset": "cifar10", "batch_size": 64,
                                  "lr": 0.1, "optimizer": "sgd", "schedule": "cosine", "epochs": 30,
                                  "seed": 0, "device": "cuda:0" if a.gpu else "cpu"}}
                return self.send(200, "application/json", json.dumps(run).encode())
            if path == "/api/history":
                pts = []
                for s in HISTORY_STEPS:
                    fg = figures(s)
                    pts.append({"step": s, "time": started + s * 0.05, "epoch": fg["epoch"] - 1,
                                "loss": fg["loss"], "train_accuracy": fg["train_accuracy"],
                                "test_accuracy": None if s == 32 else fg["test_accuracy"],
                                "lr": fg["lr"], "images_per_second": fg["images_per_second"]})
                return self.send(200, "application/json", json.dumps({"points": pts}).encode())
            self.send(404, "text/plain", b"not found\n")

    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    srv = S(("127.0.0.1", 0), H)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, a.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
