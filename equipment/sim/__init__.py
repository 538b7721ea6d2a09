"""Equipment simulators: a secsgem GEM tool, an asyncio equipment farm, an asyncua tool."""
