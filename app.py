"""vgen web demo: the Hugging Face Spaces entry point (``python app.py``).

The UI lives in ``vgen.ui`` (a Gradio Blocks app: Text to Image, Edit, Features, Compare), the
engine in the rest of ``vgen``. Settings are environment variables, read in ``vgen.config``
(``GRADIO_SERVER_PORT``, ``VGEN_CONCURRENCY``, ``VGEN_SESSION_JOBS``, ``VGEN_MCP``, ...; the
README lists them).
"""

from vgen.ui import main

if __name__ == "__main__":
    main()
