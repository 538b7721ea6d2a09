"""The journal keeps `journal_keep_events` sent events, whatever rhythm the commits have."""

from daemon.busconfig import StoreConfig
from daemon.mes import MesState
from daemon.store import Store, read_journal
from daemon.writer import PRUNE_EVERY_COMMITS, Writer


async def test_a_quiet_fab_prunes_its_journal(tmp_path) -> None:
    # A quiet fab: a WIP snapshot now and then, published at once, so the commits alternate
    # between one holding the event and one holding only the relay's cursor. Here the cursor
    # commits fall on the odd numbers, so every PRUNE_EVERY_COMMITS-th commit is an event one.
    store = Store(tmp_path / "fabd.sqlite3")
    loaded = store.open()
    mes = MesState(instance_id=loaded.instance_id)
    mes.load(loaded.entities, loaded.seqs, loaded.jseq, loaded.applied)
    keep = 10
    writer = Writer(mes, store, StoreConfig(journal_keep_events=keep, commit_interval_ms=0),
                    committed_jseq=loaded.jseq, sent_jseq=loaded.sent_jseq)
    try:
        writer.mark_sent(0)  # a relay cursor written at start (commit 1)
        await writer.commit_once()
        for _ in range(2 * PRUNE_EVERY_COMMITS):
            mes.wip_snapshot()
            await writer.commit_once()
            writer.mark_sent(writer.committed_jseq)  # published right away
            await writer.commit_once()
        assert writer.sent_jseq == writer.committed_jseq == 2 * PRUNE_EVERY_COMMITS
    finally:
        store.close()
        store.shutdown()
    kept = read_journal(tmp_path / "fabd.sqlite3")
    # journal_keep_events bounds the journal: not every event since the store was created.
    # (Pruning runs every PRUNE_EVERY_COMMITS commits, so up to that many more wait for it.)
    assert len(kept) <= keep + PRUNE_EVERY_COMMITS, len(kept)
    assert kept[-1][0] == 2 * PRUNE_EVERY_COMMITS  # the newest are the ones kept
