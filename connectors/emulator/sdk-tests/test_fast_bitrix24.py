"""fast_bitrix24 (community Python client) against the Bitrix24 emulator's inbound webhook."""

from fast_bitrix24 import Bitrix


def client(webhook: str) -> Bitrix:
    # Library defaults: a pool of 50 requests, then 2 per second, batches of 50.
    return Bitrix(webhook, verbose=False)


def test_get_all_lists_every_deal_once(b24, b24_webhook):
    deals = client(b24_webhook).get_all("crm.deal.list", {"select": ["ID", "STAGE_ID"]})
    ids = [int(d["ID"]) for d in deals]
    assert len(ids) == b24.count("deals")
    assert len(set(ids)) == len(ids)


def test_get_all_lists_every_contact(b24, b24_webhook):
    contacts = client(b24_webhook).get_all("crm.contact.list", {"select": ["ID", "NAME"]})
    assert len({int(c["ID"]) for c in contacts}) == b24.count("contacts")


def test_get_by_id_batches_answer_each_id(b24_webhook):
    b = client(b24_webhook)
    ids = [d["ID"] for d in b.get_all("crm.deal.list", {"select": ["ID"]})][:120]
    assert len(ids) == 120, "more than one batch"
    got = b.get_by_ID("crm.deal.get", ids)
    assert sorted(int(k) for k in got) == sorted(int(i) for i in ids)
    assert all(str(got[k]["ID"]) == str(k) for k in got)
