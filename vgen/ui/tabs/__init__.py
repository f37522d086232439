"""One module per tab: each holds its endpoint function (shared by the UI and the API), a
``build`` function that lays out its components and a ``wire`` function that connects them."""
