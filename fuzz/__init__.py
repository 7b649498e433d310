"""mmapkv's hypothesis fuzz suite (a package so its conftest does not clash with tests/')."""
