"""The app's runs folder is <user data>/<application>/runs, not <organization>/<application>/runs ("MAML Lab"
twice); a folder earlier versions made there is still used while the new one does not exist."""

import shutil
from pathlib import Path

from PySide6.QtCore import QStandardPaths

from maml_lab.ui.past_runs import app_runs_folder


def test_the_runs_folder_names_the_application_once_and_keeps_an_old_one(qapp):
    QStandardPaths.setTestModeEnabled(True)  # paths under ~/.qttest, not the user's own
    try:
        data = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericDataLocation))
        old = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)) / "runs"
        new = data / qapp.applicationName() / "runs"
        for folder in (old, new):
            shutil.rmtree(folder, ignore_errors=True)
        assert app_runs_folder() == new
        old.mkdir(parents=True)
        assert app_runs_folder() == old  # runs of an earlier version stay in Past runs
        new.mkdir(parents=True)
        assert app_runs_folder() == new
    finally:
        for folder in (old, new):
            shutil.rmtree(folder, ignore_errors=True)
        QStandardPaths.setTestModeEnabled(False)
