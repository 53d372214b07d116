"""Authoring: recording a run's source exchanges, testing a pipeline offline against them,
and starting a pipeline file from one response.

    fixtures.py  the recording's files (one JSON file per exchange, env.json, recording.json)
                 and what keeps every secret out of them
    record.py    `etl run --record DIR`: a transport that writes each source exchange
    offline.py   `etl test FILE --fixtures DIR`: the run replayed, its writes compared
    infer.py     what one response says: records, pagination, external id, typed fields
    init.py      `etl init NAME --url URL`: one GET, then the commented pipeline file

The CLI calls one function of each; nothing here prints or exits.
"""
