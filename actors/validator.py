"""ValidatorActor: can this task be processed? Destination, header, tracer, remote licence."""

from __future__ import annotations

from pathlib import Path

import ray
from pydicom import dcmread

from actors.stage import StageWorker
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.imaging.decay import read_slice_decays
from petray.service.remote import RemoteClient
from petray.site.radiopharm import load_table
from petray.site.siteconfig import effective_client_id, effective_remote_url, get_site_config
from petray.stages.assemblies import slice_spacing_mm
from petray.stages.destinations import assign_destinations
from petray.stages.validate import validate
from petray.tasks import get_task, instance_paths


@ray.remote(num_cpus=0, max_restarts=-1)
class ValidatorActor(StageWorker):
    stage = Stage.VALIDATING
    concurrency = 4

    def handle(self, task_id: str) -> None:
        with unit_of_work(self.sessions) as session:
            paths = [Path(p) for p in instance_paths(task_id, session=session)]
        # Every slice's DecayFactor (a few ms a file), read before the task row is locked.
        slice_decays = read_slice_decays(paths)
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session, lock=True)
            assign_destinations(task, session=session)
            validation = validate(
                task_id,
                dcmread(paths[0], stop_before_pixels=True),
                slice_spacing_mm=slice_spacing_mm(task_id, session=session),
                slice_decays=slice_decays,
                table=load_table(session=session),
                require_patient_weight=get_site_config(session=session).require_patient_weight,
                client_id=effective_client_id(self.settings, session=session),
            )
            task.date_shift_days = validation.date_shift_days
            task.radiopharmaceutical = validation.radiopharmaceutical
            validation.record.put(task)
            remote_url = effective_remote_url(self.settings, session=session)
        # Committed before the call, so a crash here repeats only this idempotent request.
        with RemoteClient(
            remote_url, self.settings.remote_token, timeout_s=self.settings.remote_timeout_s
        ) as client:
            client.check_model(validation.record.check_model)
