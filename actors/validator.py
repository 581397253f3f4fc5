"""ValidatorActor: can this task be processed? Destination, header, tracer, remote licence."""

from __future__ import annotations

import ray
from pydicom import dcmread

from actors.stage import StageWorker
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.imaging.decay import recorded_slice_decays
from petray.service.remote import RemoteClient
from petray.site.radiopharm import load_table
from petray.site.siteconfig import effective_client_id, effective_remote_url, get_site_config
from petray.stages.assemblies import instance_decays, slice_spacing_mm
from petray.stages.destinations import assign_destinations
from petray.stages.validate import validate
from petray.tasks import get_task


@ray.remote(num_cpus=0, max_restarts=-1)
class ValidatorActor(StageWorker):
    stage = Stage.VALIDATING
    concurrency = 4

    def handle(self, task_id: str) -> None:
        with unit_of_work(self.sessions) as session:
            slices = instance_decays(task_id, session=session)
        paths = [s.path for s in slices]
        # Every slice's DecayFactor, as ingest recorded it (older rows: read from the files, a
        # few ms a file, before the task row is locked).
        slice_decays = recorded_slice_decays(slices)
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
