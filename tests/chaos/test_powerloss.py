"""The power-loss emulation itself (:mod:`tests.chaos.powerloss`), on every redis-server here.

A counter INCRed in a loop while the fsync shim records what is durable:
after the emulated power loss Redis comes back with the value the counter had
at its last fsync under ``appendfsync everysec`` (and has lost the INCRs acked
after it), and with every acknowledged INCR under ``appendfsync always``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .harness import RedisProcess
from .powerloss import aof_files, binary_id, last_fsync, read_log, redis_binaries, shim

KEY = "chaos:ticks"


class Ticker(threading.Thread):
    """INCRs :data:`KEY` every ``tick`` s until Redis goes away; notes (time the reply came, value)."""

    def __init__(self, port: int, tick: float = 0.002) -> None:
        super().__init__(name="powerloss-ticker", daemon=True)
        self.port = port
        self.tick = tick
        self.acked: list[tuple[float, int]] = []

    def run(self) -> None:
        client = redis.Redis(port=self.port, socket_timeout=2.0, retry=Retry(NoBackoff(), 0))
        try:
            while True:
                try:
                    value = int(client.incr(KEY))
                except redis.RedisError:
                    return
                self.acked.append((time.time(), value))
                time.sleep(self.tick)
        finally:
            client.close()


def run_until_power_loss(rp: RedisProcess, after_fsync: tuple[float, float] | None) -> tuple[Ticker, int]:
    """Tick ~2 s, then cut the power; return the ticker and the counter Redis came back with.

    ``after_fsync`` (low, high): cut it only while the last fsync is that many seconds old.
    """
    ticker = Ticker(rp.port)
    ticker.start()
    time.sleep(2.0)
    if after_fsync is not None:
        low, high = after_fsync
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            last = last_fsync(rp.dir)
            if last is not None and low <= time.time() - last.t <= high:
                break
            time.sleep(0.005)
        else:
            raise AssertionError("never found the moment the brief asks for after an fsync")
    rp.power_loss()
    ticker.join(10)
    rp.start()
    with rp.client() as client:
        return ticker, int(client.get(KEY) or 0)


@pytest.mark.parametrize("binary", redis_binaries(), ids=binary_id)
def test_a_power_loss_under_everysec_brings_redis_back_with_the_counter_of_its_last_fsync(
    tmp_path: Path, binary: str
) -> None:
    rp = RedisProcess(tmp_path / "redis", binary=binary, appendfsync="everysec", preload=shim())
    try:
        rp.start()
        ticker, back = run_until_power_loss(rp, after_fsync=(0.4, 0.7))
        fsyncs = [d for d in read_log(rp.dir / "fsync.log") if d.t > 0]
        last = max(d.t for d in fsyncs)
        before = max(v for t, v in ticker.acked if t < last)  # acked before the fsync began: written before it
        after = min(v for t, v in ticker.acked if t > last)  # the first acked after: may be in the file already
        lost = ticker.acked[-1][1] - back
        print(f"\neverysec {binary_id(binary)}: {len(fsyncs)} fsyncs, acked {ticker.acked[-1][1]}, back {back}, "
              f"lost {lost} INCRs, acked in the {ticker.acked[-1][0] - last:.2f}s after the last fsync began")
        assert before <= back <= after, (before, back, after)
        assert lost > 0.3 / ticker.tick / 4, "the INCRs acked in the ~0.5 s after the last fsync must be lost"
        assert rp.client().incr(KEY) == back + 1  # it serves again, from what the disk held
    finally:
        rp.close()


@pytest.mark.parametrize("binary", redis_binaries(), ids=binary_id)
def test_a_power_loss_under_always_keeps_every_acknowledged_write(tmp_path: Path, binary: str) -> None:
    rp = RedisProcess(tmp_path / "redis", binary=binary, appendfsync="always", preload=shim())
    try:
        rp.start()
        ticker, back = run_until_power_loss(rp, after_fsync=None)
        acked = ticker.acked[-1][1]
        cut = sum(p.stat().st_size for p in aof_files(rp.dir))
        print(f"\nalways {binary_id(binary)}: acked {acked}, back {back} ({cut} AOF bytes)")
        assert back in (acked, acked + 1), "every acked INCR survives; the one in flight may too"
    finally:
        rp.close()


@pytest.mark.parametrize("binary", redis_binaries(), ids=binary_id)
def test_a_file_never_fsynced_is_cut_to_nothing_and_redis_starts_from_the_rest(tmp_path: Path, binary: str) -> None:
    rp = RedisProcess(tmp_path / "redis", binary=binary, appendfsync="no", preload=shim())
    try:
        rp.start()
        with rp.client() as client:
            client.set("k", "v")
        cuts = rp.power_loss()
        grown = [c for c in cuts if c.size > c.kept]
        assert grown and all(c.kept == 0 for c in grown), cuts  # appendfsync no: the write never reached the disk
        rp.start()
        with rp.client() as client:
            assert client.get("k") is None
    finally:
        rp.close()
