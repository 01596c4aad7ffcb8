"""b24pysdk (the official Bitrix24 Python SDK) against the Bitrix24 emulator.

The SDK only builds https URLs, so it talks to the TLS proxy of `b24_tls_domain`."""

import pytest
from b24pysdk import BitrixWebhook, Client


@pytest.fixture(scope="module")
def client(b24, b24_tls_domain) -> Client:
    user_and_secret = b24.line("webhook").split("/rest/", 1)[1].strip("/")
    return Client(BitrixWebhook(domain=b24_tls_domain, webhook_token=user_and_secret))


def test_a_method_and_a_page(client, b24):
    page = client.crm.deal.list(select=["ID", "TITLE"], order={"ID": "ASC"})
    assert len(page.result) == 50
    assert page.response.total == b24.count("deals")
    first = page.result[0]
    deal = client.crm.deal.get(bitrix_id=int(first["ID"])).result
    assert deal["ID"] == first["ID"] and deal["TITLE"] == first["TITLE"]


def test_as_list_reads_every_page(client, b24):
    deals = client.crm.deal.list(select=["ID"]).as_list().result
    assert len({d["ID"] for d in deals}) == b24.count("deals")


def test_as_list_fast_chains_batch_commands_keyed_1_to_50(client, b24):
    # The fast listing sends batches keyed "1".."50" whose commands reference the one
    # before ($result[n-1]...): it ends only if the portal runs them in the order sent.
    deals = list(client.crm.deal.list(select=["ID"]).as_list_fast().result)
    ids = [int(d["ID"]) for d in deals]
    assert len(ids) == b24.count("deals")
    assert ids == sorted(set(ids))


def test_contacts_as_list_fast(client, b24):
    contacts = list(client.crm.contact.list(select=["ID"]).as_list_fast().result)
    assert len({c["ID"] for c in contacts}) == b24.count("contacts")
