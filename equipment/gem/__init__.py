"""GEM (SEMI E30) host: one session per tool over our HSMS-SS, driver profiles, domain events.

API for the daemon:

- `GemToolConfig` (config.py): tool_id, `hsms: HsmsConfig` (host, port, device id,
  E37 timers), profile name, trace period. Compose a list of them into the daemon config.
- `GemDriverProfile` (profile.py): which CEIDs/VIDs/ALIDs/state values mean what;
  `FABD_SIM` is the shipped default, `PROFILES` / `get_profile(name)` the registry.
- `GemHostSession(config, sink, profile=None)` (session.py): run `await session.run()`
  as the named task `hsms[<tool_id>]` (supervises and reconnects until cancelled);
  read `session.state` (GemSessionState: hsms, communicating, control, e10, ...);
  it implements `equipment.events.ToolControl` (command, recipe_list, recipe_upload,
  recipe_download) plus recipe_delete, recipe_report, read_status, read_constants,
  trace_init, send_terminal.
- Errors (errors.py): GemError (FabdError) → GemNotCommunicatingError / GemTimeoutError
  (retry), GemConfigError (reconfigure), GemProtocolError (give up).
"""
