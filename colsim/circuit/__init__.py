"""Circuits of many columns (``protocol.circuit``): the config section (:mod:`.config`), what each column sees
(:mod:`.sensors`), building the columns and their rules (:mod:`.build`) and the in-run evaluation per column and
for the vote (:mod:`.evaluate`). The Circuit interface itself is :class:`colsim.column.Circuit`."""
