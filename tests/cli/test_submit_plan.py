"""`rayrt submit --plan` validates locally before it talks to any server."""

from rayrt.cli.app import run


def test_plan_without_order_is_refused_locally(tmp_path, capsys):
    rc = run(["submit", str(tmp_path), "--plan", "--server", "http://127.0.0.1:9"])
    assert rc == 2
    assert "--plan needs a medical order" in capsys.readouterr().err


def test_unreadable_options_file_is_refused(tmp_path, capsys):
    from rayrt.imaging.phantoms import tg119_order

    order = tmp_path / "order.json"
    order.write_text(tg119_order().model_dump_json())
    bad = tmp_path / "options.json"
    bad.write_text("{not json")
    rc = run(["submit", str(tmp_path), "--order", str(order), "--options", str(bad), "--server", "http://127.0.0.1:9"])
    assert rc == 2
    assert "cannot read the planning options" in capsys.readouterr().err


def test_options_file_must_be_an_object(tmp_path, capsys):
    from rayrt.imaging.phantoms import tg119_order

    order = tmp_path / "order.json"
    order.write_text(tg119_order().model_dump_json())
    listed = tmp_path / "options.json"
    listed.write_text("[5, 9]")
    rc = run(
        ["submit", str(tmp_path), "--order", str(order), "--options", str(listed), "--server", "http://127.0.0.1:9"]
    )
    assert rc == 2
    assert "must be a JSON object" in capsys.readouterr().err
