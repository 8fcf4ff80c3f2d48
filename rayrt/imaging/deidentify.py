"""De-identification of DICOM objects: the Basic Application Level Confidentiality Profile of DICOM
PS3.15 Annex E (Table E.1-1), with UIDs remapped consistently across a set of files.

:func:`deidentify` applies to one pydicom Dataset (every nested sequence item included):

* **X** remove, **Z** replace with a zero-length value, **D** replace with a dummy value, **U**
  replace a UID: the actions of :data:`BASIC_PROFILE` for the attributes Table E.1-1 lists
  (patient, study, visit, personnel, institution and device identification, free-text comments,
  dates and times of the study, series and acquisition);
* every private attribute removed (the profile's default for private data);
* stricter than the table: every other date, time and date-time (DA, TM, DT) replaced by a dummy
  (the table keeps some, e.g. an RT plan's date, and a treatment date identifies a patient) and
  every other person name (PN) by ``ANONYMIZED``;
* **every UID** (value representation UI) that is not a UID the standard defines (SOP classes,
  transfer syntaxes, coding schemes: ``pydicom.uid.UID_dictionary``) replaced by ``2.25.<n>``,
  ``n`` the first 128 bits of ``SHA-256(key + original UID)``. One ``key`` for a set of files maps
  a UID to the same new UID in each, so an RTDOSE still references its RTPLAN, the RTPLAN its
  RTSTRUCT and all of them one frame of reference and study; another key gives unrelated UIDs.
* ``PatientIdentityRemoved`` = YES and ``DeidentificationMethod`` /
  ``DeidentificationMethodCodeSequence`` (DCM 113100, Basic Application Confidentiality Profile)
  added; the file meta's ``MediaStorageSOPInstanceUID`` follows the new SOP Instance UID.

The patient gets a pseudonym (``PatientID`` and ``PatientName`` = ``RAYRT-<8 hex>`` from the same
key and the original ID: a dummy value, consistent within the set) because RT objects need one to
be imported by a treatment planning system. Dose grids, plans and contours are not touched.
This module is plain pydicom.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

__all__ = ["BASIC_PROFILE", "deidentify", "deidentify_bytes", "deidentify_json", "new_uid", "pseudonym"]

Action = Literal["X", "Z", "D"]

#: PS3.15 Table E.1-1, Basic Profile column, for the attributes that are not UIDs (every UID is
#: remapped by value representation). Where the table allows several actions the strictest that
#: keeps an RT object valid is used (Z for type 2 attributes of the RT IODs, X otherwise).
BASIC_PROFILE: dict[str, Action] = {
    **{
        k: "X"
        for k in (
            "AcquisitionComments AcquisitionContextSequence AcquisitionDate AcquisitionDateTime "
            "AcquisitionDeviceProcessingDescription AcquisitionProtocolDescription AcquisitionTime "
            "ActualHumanPerformersSequence AdditionalPatientHistory AdmissionID AdmittingDate "
            "AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription AdmittingTime Allergies "
            "AuthorObserverSequence BranchOfService CassetteID CommentsOnThePerformedProcedureStep "
            "ConfidentialityConstraintOnPatientDataDescription ContentCreatorIdentificationCodeSequence "
            "ContributionDescription CountryOfResidence CurrentPatientLocation CustodialOrganizationSequence "
            "DataSetTrailingPadding DerivationDescription DetectorID DeviceSerialNumber DigitalSignaturesSequence "
            "DischargeDiagnosisDescription DistributionAddress DistributionName EthnicGroup FrameComments "
            "GantryID GeneratorID HumanPerformerName HumanPerformerOrganization IconImageSequence "
            "IdentifyingComments ImageComments ImagePresentationComments ImagingServiceRequestComments "
            "Impressions InstitutionAddress InstitutionCodeSequence InstitutionName InstitutionalDepartmentName "
            "InsurancePlanIdentification IntendedRecipientsOfResultsIdentificationSequence "
            "InterpretationApproverSequence InterpretationAuthor InterpretationDiagnosisDescription "
            "InterpretationIDIssuer InterpretationRecorder InterpretationText InterpretationTranscriber "
            "IssuerOfAdmissionID IssuerOfPatientID IssuerOfServiceEpisodeID MAC MedicalAlerts "
            "MedicalRecordLocator MilitaryRank ModifiedAttributesSequence ModifiedImageDescription "
            "ModifyingDeviceID NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults Occupation "
            "OperatorIdentificationSequence OriginalAttributesSequence OrderCallbackPhoneNumber "
            "OrderEnteredBy OrderEntererLocation OtherPatientIDs OtherPatientIDsSequence OtherPatientNames "
            "OverlayComments OverlayDate OverlayTime ParticipantSequence PatientAddress PatientAge "
            "PatientBirthName PatientBirthTime PatientComments PatientInsurancePlanCodeSequence "
            "PatientMotherBirthName PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence "
            "PatientReligiousPreference PatientSexNeutered PatientSize PatientState PatientTelephoneNumbers "
            "PatientTransportArrangements PatientWeight PerformedLocation PerformedProcedureStepDescription "
            "PerformedProcedureStepEndDate PerformedProcedureStepEndTime PerformedProcedureStepID "
            "PerformedProcedureStepStartDate PerformedProcedureStepStartTime PerformedStationAETitle "
            "PerformedStationGeographicLocationCodeSequence PerformedStationName PerformedStationNameCodeSequence "
            "PerformingPhysicianIdentificationSequence PerformingPhysicianName PersonAddress "
            "PersonTelephoneNumbers PhysicianApprovingInterpretation PhysiciansOfRecord "
            "PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence PlateID "
            "PreMedication PregnancyStatus ReasonForTheImagingServiceRequest ReasonForStudy "
            "ReferencedDigitalSignatureSequence ReferencedPatientAliasSequence ReferencedPatientSequence "
            "ReferencedPerformedProcedureStepSequence ReferencedSOPInstanceMACSequence ReferencedStudySequence "
            "ReferringPhysicianAddress ReferringPhysicianIdentificationSequence ReferringPhysicianTelephoneNumbers "
            "RegionOfResidence RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments "
            "RequestedProcedureDescription RequestedProcedureID RequestedProcedureLocation RequestingPhysician "
            "RequestingService ResponsibleOrganization ResponsiblePerson ResultsComments "
            "ResultsDistributionListSequence ResultsIDIssuer ReviewerName ScheduledHumanPerformersSequence "
            "ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence "
            "ScheduledPerformingPhysicianName ScheduledProcedureStepEndDate ScheduledProcedureStepEndTime "
            "ScheduledProcedureStepDescription ScheduledProcedureStepLocation ScheduledProcedureStepStartDate "
            "ScheduledProcedureStepStartTime ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence "
            "ScheduledStationName ScheduledStationNameCodeSequence ScheduledStudyLocation "
            "ScheduledStudyLocationAETitle SeriesDate SeriesDescription SeriesTime ServiceEpisodeDescription "
            "ServiceEpisodeID SmokingStatus SpecialNeeds StationName StudyComments StudyDescription StudyIDIssuer "
            "TextComments TextString TimezoneOffsetFromUTC TopicAuthor TopicKeywords TopicSubject TopicTitle "
            "VerifyingOrganization VisitComments"
        ).split()
    },
    **{
        k: "Z"
        for k in (
            "AccessionNumber ContentCreatorName OperatorsName PatientBirthDate PatientSex ReferringPhysicianName "
            "StudyDate StudyID StudyTime VerifyingObserverIdentificationCodeSequence"
        ).split()
    },
    **{k: "D" for k in ("ContentDate ContentTime PatientID PatientName PersonName VerifyingObserverName").split()},
}

_DUMMY_DATE, _DUMMY_TIME = "19000101", "000000.00"


def new_uid(key: bytes, uid: str) -> str:
    """The replacement of ``uid`` under ``key``: ``2.25.`` + 128 bits of SHA-256 (PS3.5 B.2)."""
    return "2.25." + str(int.from_bytes(hashlib.sha256(key + uid.encode("ascii", "replace")).digest()[:16], "big"))


def pseudonym(key: bytes, patient_id: str) -> str:
    """The dummy PatientID / PatientName that replaces ``patient_id`` under ``key``."""
    return "RAYRT-" + hashlib.sha256(key + b"patient\0" + patient_id.encode("utf-8", "replace")).hexdigest()[:8]


def _is_standard_uid(uid: str) -> bool:
    return uid in UID_dictionary


def _walk(ds: Dataset, key: bytes, alias: str) -> None:
    for elem in list(ds):
        kw = elem.keyword
        if elem.tag.is_private:
            del ds[elem.tag]
            continue
        action = BASIC_PROFILE.get(kw)
        if action == "X":
            del ds[elem.tag]
            continue
        if action == "Z":
            elem.value = [] if elem.VR == "SQ" else ""
            continue
        if action == "D":
            if kw in ("PatientID", "PatientName"):
                elem.value = alias
            elif elem.VR == "DA":
                elem.value = _DUMMY_DATE
            elif elem.VR == "TM":
                elem.value = _DUMMY_TIME
            elif elem.VR == "SQ":
                elem.value = []
            else:
                elem.value = "ANONYMIZED"
            continue
        if elem.VR in ("DA", "TM", "DT") and elem.value:  # stricter than the table: a treatment date identifies
            elem.value = {"DA": _DUMMY_DATE, "TM": _DUMMY_TIME, "DT": _DUMMY_DATE + _DUMMY_TIME}[elem.VR]
        elif elem.VR == "PN" and elem.value:
            elem.value = "ANONYMIZED"
        elif elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            mapped = [str(v) if _is_standard_uid(str(v)) else new_uid(key, str(v)) for v in values]
            elem.value = mapped if elem.VM > 1 else mapped[0]
        elif elem.VR == "SQ":
            for item in elem.value:
                _walk(item, key, alias)


def deidentify(ds: Dataset, key: bytes) -> Dataset:
    """De-identify ``ds`` in place (see the module doc) and return it. ``key``: the secret that
    makes the new UIDs and the pseudonym; the same key for every file of one set."""
    _walk(ds, key, pseudonym(key, str(ds.get("PatientID", ""))))
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "rayrt: PS3.15 Basic Profile, dummy dates"  # LO: 64 characters at most
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = [code]
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


#: JSON keys whose values identify the patient (rayrt's own result files): replaced by the pseudonym
_JSON_PATIENT_KEYS = frozenset({"patient_id", "patient_name", "PatientID", "PatientName"})


def deidentify_json(value: object, key: bytes) -> object:
    """A JSON document of rayrt's (a plan, a stage result), de-identified like the DICOM files of the
    same set: patient ids and names -> the pseudonym, every ``*_uid`` / ``*UID`` string -> its new
    UID (so that a plan's JSON names the same UIDs as its de-identified RTPLAN)."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            if k in _JSON_PATIENT_KEYS and isinstance(v, str):
                out[k] = pseudonym(key, v) if v else v
            elif (k.endswith("_uid") or k.endswith("UID")) and isinstance(v, str) and v and not _is_standard_uid(v):
                out[k] = new_uid(key, v)
            else:
                out[k] = deidentify_json(v, key)
        return out
    if isinstance(value, list):
        return [deidentify_json(v, key) for v in value]
    return value


def deidentify_bytes(data: bytes, key: bytes) -> bytes:
    """A DICOM file's bytes, de-identified (Part 10 in, Part 10 out)."""
    import io

    ds = pydicom.dcmread(io.BytesIO(data))
    deidentify(ds, key)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
