"""What every driver shares: ``client`` (timed OpenAI requests), ``sse`` (stream parsing), ``metrics``
(TTFT/TPOT/ITL/E2E arithmetic), ``inprocess`` (engine runs timed without a server), ``results`` (stamp,
save and print: ``finish``), ``prompts``, ``peers`` (our server and peer servers started and stopped),
``plots``."""
