"""Studies: experiments that are not pruning schedules but run as schedule kinds of their own (registered in
``methods.REGISTRY``): the sparse-kernel timing study and random-graph RNNs.

May import report (figures and statistics drawn from result rows), engine, hardware and everything below;
never methods, execute or the CLI.
"""
