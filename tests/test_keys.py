"""Key names: one prefix with a Redis Cluster hash tag per run, built by nepi_dist.engine.keys."""

from __future__ import annotations

import functools
import re

import pytest
from redis.crc import key_slot

from nepi_dist import ExperimentController, ResourceAction, ResourceState
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.engine.keys import Keys, check_id, worker_key, worker_pattern
from nepi_dist.errors import ExperimentIdError, UnknownGuidError

#: Keys a run may leave outside its prefix: Celery/kombu's own, worker heartbeats, the list of live runs.
CELERY_OR_WORKER = re.compile(
    r"^(_kombu\..+"  # kombu bindings
    r"|unacked(_index|_mutex)?"  # kombu's redis transport (acks_late)
    r"|nepi\.pool(\x06\x16\d+)?"  # the pool queue (and its priority lists)
    r"|[0-9a-f-]+\.reply\.celery\.pidbox"  # control replies
    r"|nepi:worker:[^:{}]+"  # worker heartbeats
    r"|nepi:runs)$"  # the runs not yet released, which the workers' keepers keep
)


def hash_tag(key: str) -> str:
    """Return the part of ``key`` Redis Cluster hashes (its first ``{…}``)."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


# -- the shapes, pinned -----------------------------------------------------------------


def test_every_key_shape_of_a_run_is_pinned() -> None:
    k = Keys("exp1", "20240101120000000000")
    p = "nepi:{exp1:20240101120000000000}"
    assert k.prefix == p
    assert k.run == f"{p}:run"
    assert k.guids == f"{p}:guids"
    assert k.rm(7) == f"{p}:rm:7"
    assert k.conn(7) == f"{p}:conn:7"
    assert k.wait(7) == f"{p}:wait:7"
    assert k.group(3) == f"{p}:grp:3"
    assert k.group_start(3) == f"{p}:grpstart:3"
    assert k.pending == f"{p}:pending"
    assert k.running == f"{p}:running"
    assert k.timers == f"{p}:timers"
    assert k.outbox == f"{p}:outbox"
    assert k.task("ab12cd3") == f"{p}:task:ab12cd3"
    assert k.events == f"{p}:events"
    assert k.alarm == f"{p}:alarm"
    assert k.reply("ab12") == f"{p}:reply:ab12"
    assert k.key("rm", "") == f"{p}:rm:"
    assert k.key("a", 1, "b") == f"{p}:a:1:b"


def test_the_hash_tag_is_exp_id_colon_run_id_for_every_key() -> None:
    k = Keys("my-exp_1.0", "r-2")
    keys = [
        k.run, k.guids, k.rm(1), k.conn(1), k.wait(1), k.group(1), k.group_start(1),
        k.pending, k.running, k.timers, k.outbox, k.task("x1"), k.events, k.alarm,
        k.reply("x2"),
    ]
    assert {hash_tag(key) for key in keys} == {"my-exp_1.0:r-2"}
    assert {key_slot(key.encode()) for key in keys} == {key_slot(b"my-exp_1.0:r-2")}


def test_the_scan_pattern_matches_the_run_keys_and_escapes_the_braces() -> None:
    k = Keys("e", "r")
    assert k.pattern() == "nepi:\\{e:r\\}:*"


def test_the_worker_heartbeat_key_is_outside_every_run() -> None:
    assert worker_key("host.123.abcdef") == "nepi:worker:host.123.abcdef"
    assert worker_pattern() == "nepi:worker:*"
    assert "{" not in worker_key("w")


@pytest.mark.parametrize("value", ["e", "E-1", "a.b_c-d", "20240101120000000000", "x" * 128])
def test_a_safe_id_is_accepted_unchanged(value: str) -> None:
    assert check_id("exp_id", value) == value


@pytest.mark.parametrize("value", ["", "a b", "x:y", "{t}", "a}b", "a/b", "x*", "é", "x" * 129, 5, None])
def test_an_unsafe_id_is_refused_for_exp_id_and_run_id(value: object) -> None:
    with pytest.raises(ExperimentIdError):
        check_id("exp_id", value)  # type: ignore[arg-type]
    with pytest.raises(ExperimentIdError):
        Keys(value, "r")  # type: ignore[arg-type]
    with pytest.raises(ExperimentIdError):
        Keys("e", value)  # type: ignore[arg-type]


def test_a_controller_builds_its_keys_from_its_exp_id_and_run_id(ec: ExperimentController) -> None:
    assert ec.store.keys.prefix == f"nepi:{{{ec.exp_id}:{ec.run_id}}}"
    g = ec.register_resource("Plain")
    assert ec.store.client.hget(f"nepi:{{{ec.exp_id}:{ec.run_id}}}:rm:{g}", "rtype") == "Plain"


# -- a real run ------------------------------------------------------------------------------


def test_every_redis_key_of_a_run_is_under_its_prefix(ec: ExperimentController) -> None:
    a = ec.register_resource("Plain")
    b = ec.register_resource("Plain")
    ec.set(a, "label", "x")
    ec.register_connection(a, b)
    ec.register_condition(b, ResourceAction.START, a, ResourceState.STARTED)
    tid = ec.schedule("0s", functools.partial(ec.get_resource(a).echo, 1), track=True)
    ec.deploy([a, b])
    ec.wait_finished([a, b], timeout=20)
    assert ec.state(a) == ResourceState.FINISHED
    assert ec.state(b) == ResourceState.FINISHED

    keys = set(ec.store.client.scan_iter(count=1000))
    prefix = ec.store.keys.prefix + ":"
    run_keys = {key for key in keys if key.startswith(prefix)}
    others = keys - run_keys
    assert not [key for key in others if not CELERY_OR_WORKER.match(key)]
    assert any(key.startswith("nepi:worker:") for key in others), "the in-process worker's heartbeat"

    k = ec.store.keys
    for expected in (k.run, k.guids, k.rm(a), k.rm(b), k.conn(a), k.conn(b), k.events, k.task(tid)):
        assert expected in run_keys
    assert {hash_tag(key) for key in run_keys} == {f"{ec.exp_id}:{ec.run_id}"}
    assert len({key_slot(key.encode()) for key in run_keys}) == 1
    # `running` and `publishing` come and go while the last actions finish: compare the rest.
    transient = {k.running, k.publishing}
    matched = set(ec.store.client.scan_iter(match=k.pattern(), count=1000))
    assert matched - transient == run_keys - transient


def test_two_runs_of_one_experiment_on_one_redis_keep_disjoint_keys(redis_server: EmbeddedRedis) -> None:
    url = redis_server.url
    ec1 = ExperimentController(exp_id="same", run_id="run-1", redis_url=url, local_worker=True, nthreads=4)
    try:
        ec2 = ExperimentController(exp_id="same", run_id="run-2", redis_url=url, local_worker=True, nthreads=4)
        try:
            one = [ec1.register_resource("Plain") for _ in range(2)]
            two = [ec2.register_resource("Plain") for _ in range(3)]
            assert one == [1, 2]
            assert two == [1, 2, 3]  # the same guids, in another run
            ec1.set(1, "label", "first run")
            ec2.set(1, "label", "second run")
            ec1.deploy()
            ec2.deploy()
            ec1.wait_finished(one, timeout=20)
            ec2.wait_finished(two, timeout=20)

            assert ec1.resources == [1, 2]
            assert ec2.resources == [1, 2, 3]
            assert ec1.get(1, "label") == "first run"
            assert ec2.get(1, "label") == "second run"
            with pytest.raises(UnknownGuidError):
                ec1.get_resource(3)
            assert ec1.store.keys.prefix == "nepi:{same:run-1}"
            assert ec2.store.keys.prefix == "nepi:{same:run-2}"

            client = ec1.store.client
            keys1 = set(client.scan_iter(match=ec1.store.keys.pattern(), count=1000))
            keys2 = set(client.scan_iter(match=ec2.store.keys.pattern(), count=1000))
            assert keys1
            assert keys2
            assert not keys1 & keys2
            assert all(key.startswith("nepi:{same:run-1}:") for key in keys1)
            assert all(key.startswith("nepi:{same:run-2}:") for key in keys2)
            # each run's event stream holds only its own resources' changes
            assert {int(f["g"]) for _, f in client.xrange(ec1.store.keys.events)} == {1, 2}
            assert {int(f["g"]) for _, f in client.xrange(ec2.store.keys.events)} == {1, 2, 3}

            ec1.shutdown()
            assert [ec1.state(g) for g in one] == [ResourceState.RELEASED] * 2
            assert [ec2.state(g) for g in two] == [ResourceState.FINISHED] * 3
        finally:
            ec2.shutdown()
    finally:
        ec1.shutdown()


def test_a_run_keeps_working_after_another_run_on_its_redis_shut_down(redis_server: EmbeddedRedis) -> None:
    url = redis_server.url
    ec1 = ExperimentController(exp_id="same", run_id="run-1", redis_url=url, local_worker=True, nthreads=4)
    try:
        ec2 = ExperimentController(exp_id="same", run_id="run-2", redis_url=url, local_worker=True, nthreads=4)
        try:
            ec1.register_resource("Plain")
            ec1.deploy()
            ec1.wait_finished(1, timeout=20)
            ec1.shutdown()
            g = ec2.register_resource("Plain")
            ec2.deploy()
            ec2.wait_finished(g, timeout=20)
            assert ec2.state(g) == ResourceState.FINISHED
            assert ec2.resources == [1]
        finally:
            ec2.shutdown()
    finally:
        ec1.shutdown()
