"""Capability matching on SQLite, PostgreSQL and MariaDB: the claim's SQL and the pure
rule ``core.requirements.shortfalls`` agree on random requirement/capability pairs (the
set match and the real claim); a GPU job never lands on a CPU-only worker over many
leases; ``vram>=8G`` goes only to the 8 GiB worker; a waiting job says why."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from parallel_pilot.coordinator.services import claim
from parallel_pilot.core.protocol import Capabilities, Gpu, RenderDevice
from parallel_pilot.core.requirements import GIB, Requirements, parse_requires, shortfalls
from parallel_pilot.store import queries as q
from parallel_pilot.store.queries import matching as qm
from parallel_pilot.store.queries import sync as qs
from parallel_pilot.store.queries import workers as qw
from tests.integration.conftest import Coordinator, make_coordinator
from tests.integration.test_sync import done, job, register_with_id, submit, sync_

API = "/api/v1"
TAGS = ("studio-a", "linux", "gpu-farm", "b")
VENDOR_NAMES = {"nvidia": "NVIDIA GeForce RTX 3060", "amd": "AMD Radeon RX 7900",
                "intel": "Intel Arc A770", "apple": "Apple M2", None: "Mystery Accelerator"}
DEVICE_TYPES = ("CPU", "CUDA", "OPTIX", "HIP", "ONEAPI", "METAL")


def random_requirements(rnd: random.Random) -> dict[str, Any]:
    """Requirements near the thresholds the capabilities below straddle."""
    r: dict[str, Any] = {}
    if rnd.random() < 0.3:
        r["min_blender"] = rnd.choice(["4.2", "4.1.5", "5", "3.6.2", "4.2.0", "x"])
    if rnd.random() < 0.4:
        r["min_ram_bytes"] = rnd.choice([4, 8, 16, 17]) * GIB
    if rnd.random() < 0.3:
        r["min_cpu_cores"] = rnd.choice([1, 2, 4, 8])
    if rnd.random() < 0.2:
        r["gpu"] = True
    if rnd.random() < 0.4:
        r["gpu_count"] = rnd.choice([0, 1, 2, 3])
    if rnd.random() < 0.4:
        r["min_vram_bytes"] = rnd.choice([0, 6 * GIB, 8 * GIB, 8 * GIB + 1, 12 * GIB])
    if rnd.random() < 0.2:
        r["gpu_vendor"] = rnd.choice(["nvidia", "amd", "intel", "apple"])
    if rnd.random() < 0.3:
        r["tags"] = rnd.sample(TAGS, rnd.randint(1, 2))
    if rnd.random() < 0.2:
        r["sandbox"] = True
    if rnd.random() < 0.15:
        r["render_gpu"] = True
    if rnd.random() < 0.15:
        r["cycles_device"] = rnd.choice(["CUDA", "OPTIX", "HIP", "ONEAPI", "METAL"])
    Requirements.model_validate(r)
    return r


def random_worker(rnd: random.Random) -> tuple[Capabilities, bool]:
    gpus = [Gpu(name=VENDOR_NAMES[rnd.choice(list(VENDOR_NAMES))],
                memory_bytes=rnd.choice([None, 4 * GIB, 6 * GIB, 8 * GIB, 12 * GIB]))
            for _ in range(rnd.choice([0, 0, 1, 1, 2, 3]))]
    devices = [RenderDevice(type=t, name=t) for t in
               rnd.sample(DEVICE_TYPES, rnd.randint(0, 2))]
    caps = Capabilities(
        cpu_cores=rnd.choice([1, 2, 4, 8]), ram_bytes=rnd.choice([4, 8, 16]) * GIB,
        gpus=gpus, render_devices=devices, kinds=["sleep"],
        blender_version=rnd.choice([None, "4.2.0", "4.1.9", "5.0.1", "Blender 4.2 LTS",
                                    "3.6.2"]),
        tags=rnd.sample(TAGS, rnd.randint(0, 3)), sandbox=rnd.random() < 0.5, slots=64)
    return caps, rnd.random() < 0.5


def test_the_set_match_in_sql_agrees_with_the_rule(coordinator: Coordinator) -> None:
    rnd = random.Random(15)
    wanted = [random_requirements(rnd) for _ in range(400)]
    with coordinator.services.transaction() as conn:
        ids = qs.requirement_set_ids(conn, wanted)
        upto = qm.max_set_id(conn)
        sets = qm.set_requirements(conn, [i for i in ids if i])
    assert len(sets) > 150  # mostly distinct sets
    checked = fitting_total = 0
    for _ in range(120):
        caps, trusted = random_worker(rnd)
        with coordinator.services.transaction() as conn:
            in_sql = set(qm.fitting_set_ids(conn, qm.worker_terms(caps, trusted), after=0,
                                            upto=upto))
        by_rule = {i for i, r in sets.items()
                   if not shortfalls(Requirements.model_validate(r), caps, trusted=trusted)}
        assert in_sql == by_rule, (caps, trusted, sorted(in_sql ^ by_rule)[:5],
                                   [sets[i] for i in sorted(in_sql ^ by_rule)[:3]])
        checked += len(sets)
        fitting_total += len(by_rule)
    # both answers occur often (the pairs straddle the thresholds)
    assert 0.05 * checked < fitting_total < 0.95 * checked


def test_the_claim_agrees_with_the_rule(migrated_database_url: str, tmp_path: Path) -> None:
    """One ready task per random requirement set; each random worker's claim (rolled back)
    takes only tasks whose requirements it meets: all of those that need no GPU, and of
    those that hold GPUs as many as its GPUs take (none left out that would fit)."""
    coord = make_coordinator(migrated_database_url, tmp_path, max_worker_slots=64)
    with coord.client:
        _claims_agree(coord)
    coord.services.engine.dispose()


def _claims_agree(coord: Coordinator) -> None:
    rnd = random.Random(1515)
    needs: dict[int, dict[str, Any]] = {}  # job id -> its requirements
    while len(needs) < 40:
        r = random_requirements(rnd)
        needs[submit(coord, requirements=r)] = r
    svc = coord.services
    for n in range(40):
        caps, trusted = random_worker(rnd)
        _, worker_id = register_with_id(coord, f"r{n}", **caps.model_dump(mode="json"))
        with svc.transaction() as conn:
            qw.set_worker_trusted(conn, worker_id, trusted)
        with svc.engine.connect() as conn:
            outer = conn.begin()
            worker = q.get_worker(conn, worker_id)
            leases = claim.claim_in(conn, svc, worker, caps, 64, coord.clock(), fresh_sets=True,
                                   prefetch=0)
            outer.rollback()
        claimed = {t.job_id for t in leases}
        meets = {j for j, r in needs.items()
                 if not shortfalls(Requirements.model_validate(r), caps, trusted=trusted)}
        # GPU slots: tasks that hold GPUs fill the worker's GPUs, the rest all come
        holds = {j: Requirements.model_validate(r).gpus_held for j, r in needs.items()}
        assert claimed <= meets, (caps, trusted)
        assert {j for j in meets if not holds[j]} <= claimed, (caps, trusted)
        assert {t.job_id: t.gpus for t in leases} == {j: holds[j] for j in claimed}
        left = len(caps.gpus) - sum(holds[j] for j in claimed)
        assert left >= 0 and all(holds[j] > left for j in meets - claimed), (caps, trusted)


def _lease_all(coord: Coordinator, workers: dict[str, dict[str, str]],
               rounds: int = 200) -> dict[int, str]:
    """Every worker syncs in turn, finishing what it holds, until no tasks are handed out;
    returns task id -> the worker that got it (every lease of it)."""
    got: dict[int, list[str]] = {}
    held: dict[str, list[dict[str, Any]]] = {name: [] for name in workers}
    for _ in range(rounds):
        leased = 0
        for name, headers in workers.items():
            answer = sync_(coord, headers, reports=done(held[name]), free_slots=2)
            held[name] = answer["tasks"]
            for t in answer["tasks"]:
                got.setdefault(t["task_id"], []).append(name)
            leased += len(answer["tasks"])
        if not leased and not any(held.values()):
            break
    assert all(len(set(names)) == 1 for names in got.values())
    return {t: names[0] for t, names in got.items()}


def test_a_gpu_job_never_lands_on_a_cpu_only_worker(coordinator: Coordinator) -> None:
    coord = coordinator
    workers = {f"cpu{i}": register_with_id(coord, f"cpu{i}", slots=2)[0] for i in range(3)}
    workers["gpu"] = register_with_id(coord, "gpu", slots=2,
                                      gpus=[{"name": "NVIDIA A10", "memory_bytes": 24 * GIB}])[0]
    gpu_job = submit(coord, tasks=40, requirements=parse_requires("gpu"))
    cpu_job = submit(coord, tasks=40)
    where = _lease_all(coord, workers)
    tasks = {t["id"]: t["job_id"] for j in (gpu_job, cpu_job)
             for t in coord.client.get(f"{API}/jobs/{j}/tasks",
                                       headers=coord.user()).json()["tasks"]}
    on = {j: [where[t] for t, jj in tasks.items() if jj == j] for j in (gpu_job, cpu_job)}
    assert len(on[gpu_job]) == 40 and set(on[gpu_job]) == {"gpu"}
    assert len(on[cpu_job]) == 40 and {w for w in on[cpu_job] if w.startswith("cpu")}
    assert job(coord, gpu_job)["state"] == job(coord, cpu_job)["state"] == "completed"


def test_vram_8g_goes_only_to_the_8_gib_worker(coordinator: Coordinator) -> None:
    coord = coordinator
    workers = {
        "cpu": register_with_id(coord, "cpu", slots=2)[0],
        "six": register_with_id(coord, "six", slots=2, gpus=[
            {"name": "NVIDIA RTX 2060", "memory_bytes": 6 * GIB}] * 2)[0],
        "unknown": register_with_id(coord, "unknown", slots=2,
                                    gpus=[{"name": "NVIDIA RTX"}])[0],
        "eight": register_with_id(coord, "eight", slots=2, gpus=[
            {"name": "NVIDIA RTX 3070", "memory_bytes": 8 * GIB}])[0],
    }
    job_id = submit(coord, tasks=30, requirements=parse_requires("vram>=8G"))
    where = _lease_all(coord, workers)
    assert len(where) == 30 and set(where.values()) == {"eight"}
    assert job(coord, job_id)["state"] == "completed"


def reason(coord: Coordinator, job_id: int) -> str | None:
    return job(coord, job_id)["waiting_reason"]


def test_a_waiting_job_says_why(coordinator: Coordinator) -> None:
    coord = coordinator
    gpu8 = submit(coord, tasks=3, requirements=parse_requires("gpu,vram>=8G"))
    assert reason(coord, gpu8) == "waiting: no worker is online"
    six = [{"name": "NVIDIA RTX 2060", "memory_bytes": 6 * GIB}]
    for i in range(3):
        register_with_id(coord, f"six{i}", gpus=six)
    assert reason(coord, gpu8) == ("waiting: no online worker has a GPU with >= 8 GiB; "
                                   "3 workers have GPUs with 6 GiB")
    tagged = submit(coord, requirements=parse_requires("tag=studio-a"))
    assert reason(coord, tagged) == "waiting: no online worker has tag studio-a; " \
        "3 workers have no tags"
    roomy = submit(coord, requirements=parse_requires("ram>=16G,cores>=4"))
    assert reason(coord, roomy) == ("waiting: no online worker has 16 GiB RAM; 3 workers "
                                    "have 1 GiB RAM; none has 4 CPU cores either")
    sweep_job = coord.client.post(f"{API}/jobs", headers=coord.user(), json={
        "kind": "sweep", "params": {"command": ["true"], "items": "1-2"}}).json()["id"]
    assert reason(coord, sweep_job) == (
        "waiting: no online worker runs sweep tasks (3 workers online; a worker's owner "
        "allows it with pilot worker --allow sweep)")
    # the list says the same
    listed = {j["id"]: j["waiting_reason"] for j in
              coord.client.get(f"{API}/jobs", headers=coord.user()).json()["jobs"]}
    assert listed[gpu8] == reason(coord, gpu8) and listed[tagged] == reason(coord, tagged)
    # a job some worker can run waits for nothing
    plain = submit(coord)
    assert reason(coord, plain) is None
    # a worker that fits part of it: each shortfall counted
    register_with_id(coord, "studio", tags=["studio-a"])
    mixed = submit(coord, requirements=parse_requires("vram>=8G,tag=studio-a"))
    assert reason(coord, mixed) == ("waiting: no online worker has a GPU with >= 8 GiB; "
                                    "3 workers have GPUs with 6 GiB, 1 worker has no GPU")
    split = submit(coord, requirements=parse_requires("gpu,tag=studio-a"))
    assert reason(coord, split) == ("waiting: no online worker meets every requirement: "
                                    "3 of 4 lack tag studio-a, 1 of 4 lack a GPU")
    assert reason(coord, tagged) is None  # the studio worker can take it
    # a fitting worker joins: the job no longer waits on one; it is leased, then running
    eight, _ = register_with_id(coord, "eight", slots=3, gpus=[
        {"name": "NVIDIA RTX 3070", "memory_bytes": 8 * GIB}])
    assert reason(coord, gpu8) is None
    leases = sync_(coord, eight, free_slots=3)["tasks"]
    assert {t["job_id"] for t in leases} <= {gpu8, plain, tagged, roomy, mixed}
    # every worker falls silent: nobody is online
    coord.clock.advance(coord.services.settings.offline_seconds + 1)
    assert reason(coord, tagged) == "waiting: no worker is online"
    assert reason(coord, roomy) == "waiting: no worker is online"


def test_a_sandbox_is_believed_only_of_a_trusted_worker(coordinator: Coordinator) -> None:
    coord = coordinator
    headers, worker_id = register_with_id(coord, "boxed", sandbox=True)
    job_id = submit(coord, requirements=parse_requires("sandbox"))
    assert reason(coord, job_id) == ("waiting: no online worker has a sandbox an admin "
                                     "trusts; 1 worker has a sandbox no admin marked trusted")
    assert sync_(coord, headers, free_slots=1)["tasks"] == []
    with coord.services.transaction() as conn:
        qw.set_worker_trusted(conn, worker_id, True)
    coord.services.worker_cache.forget(worker_id)
    assert reason(coord, job_id) is None
    assert [t["job_id"] for t in sync_(coord, headers, free_slots=1)["tasks"]] == [job_id]


@pytest.mark.parametrize("text", ["vram>=8", "gpu=purple", "tag"])
def test_bad_requirements_are_refused_by_the_api(coordinator: Coordinator, text: str) -> None:
    bad = {"vram>=8": {"min_vram_bytes": -8}, "gpu=purple": {"gpu_vendor": "purple"},
           "tag": {"tags": [""]}}[text]
    r = coordinator.client.post(f"{API}/jobs", headers=coordinator.user(), json={
        "kind": "sleep", "params": {"tasks": 1, "milliseconds": 0}, "requirements": bad})
    assert r.status_code == 400 and "requirements" in r.json()["message"], r.text


def test_migration_0012_gives_existing_sets_their_columns(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from parallel_pilot.store.database import MIGRATIONS_DIR, make_engine, migrate
    from parallel_pilot.store.tables import requirement_set_tags, requirement_sets

    engine = make_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0011")
    old = [{"gpu": True}, {"tags": ["b", "a"]}, {"min_blender": "4.2", "sandbox": True},
           {"min_ram_bytes": 8 * GIB, "render_gpu": True}, {"min_blender": "new"}]
    with engine.begin() as conn:
        conn.execute(sa.table("requirement_sets", sa.column("id"), sa.column("digest"),
                              sa.column("requirements", sa.JSON)).insert(),
                     [{"id": i + 1, "digest": f"{i:064d}", "requirements": r}
                      for i, r in enumerate(old)])
    migrate(engine)
    columns = [c.name for c in requirement_sets.c if c.name not in
               ("id", "digest", "requirements")]
    with engine.begin() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(requirement_sets))}
        tags = sorted(tuple(r) for r in conn.execute(sa.select(requirement_set_tags)))
        assert tags == [(2, "a"), (2, "b")]
        for i, r in enumerate(old):
            want = qm.set_columns(r)
            assert {c: getattr(rows[i + 1], c) for c in columns} == \
                {c: want[c] for c in columns}, r
        # and the claim's match reads them: a worker with a GPU and Blender 4.2 meets
        # the GPU set and the unparseable-version one, not the rest
        caps = Capabilities(cpu_cores=2, ram_bytes=4 * GIB, blender_version="4.2.0",
                            gpus=[Gpu(name="NVIDIA T4", memory_bytes=16 * GIB)])
        assert qm.fitting_set_ids(conn, qm.worker_terms(caps, False), after=0,
                                  upto=5) == [1, 5]
    engine.dispose()
