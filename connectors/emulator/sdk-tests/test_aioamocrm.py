"""aioamocrm (an async amoCRM API v4 client) against the amoCRM emulator, with a
long-lived token (private integration)."""

import asyncio
import json
import urllib.request

from aioamocrm import AmoCRMClient, LongLivedToken

TOKEN = "rebuy-sdk-suite-long-lived-token"


def client(amo) -> AmoCRMClient:
    # The library spaces requests exactly 1/7 s apart (its default of 7 per second); the
    # emulator counts any one-second window, as amoCRM does, and that spacing lets an 8th
    # request into some window (a 429, which the library retries). 6 per second keeps clear.
    return AmoCRMClient(base_url=amo.base_url, auth=LongLivedToken(TOKEN), rate_limit=6.0)


def stats(amo) -> dict:
    with urllib.request.urlopen(f"{amo.base_url}/_emulator/stats") as r:
        return json.load(r)


def test_the_token_is_the_emulators(amo):
    assert amo.line("long-lived token") == TOKEN


def test_lists_every_lead_and_contact(amo):
    async def run():
        async with client(amo) as c:
            account = await c.account.get()
            leads = [lead.id async for lead in c.leads.iterate()]
            contacts = [contact.id async for contact in c.contacts.iterate()]
            return account, leads, contacts

    account, leads, contacts = asyncio.run(run())
    assert account.subdomain == amo.line("account").split()[0]
    assert len(leads) == amo.count("leads") and len(set(leads)) == len(leads)
    assert len(contacts) == amo.count("contacts") and len(set(contacts)) == len(contacts)
    s = stats(amo)
    assert s["blocked_403"] == 0 and s["unauthorized_401"] == 0


def test_filtered_listing(amo):
    async def run():
        async with client(amo) as c:
            page = await c.leads.get_page(limit=5)
            first = page.items[0]
            got = [lead async for lead in c.leads.iterate(filter={"id": [first.id]})]
            return first, got

    first, got = asyncio.run(run())
    assert [lead.id for lead in got] == [first.id]
