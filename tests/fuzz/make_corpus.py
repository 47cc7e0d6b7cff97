#!/usr/bin/env python3
"""Writes the fuzz corpus entries that are not sipp scenarios: the RFC 4475
torture messages (written from the RFC text), agentline-specific SIP
messages, SDP bodies, Authorization values, RTP/RTCP (baresip captures),
DTMF, AudioSocket, WAV and provider events. Run after make_sip_corpus.py
(the SDP corpus takes the bodies of the SIP corpus)."""
import os
OUT=os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus/sip")
SDP150 = "v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 49217 RTP/AVP 0 12\nm=video 3227 RTP/AVP 31\na=rtpmap:31 LPC\n"
M = {}
M["wsinv"] = """INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

""" + SDP150.replace("192.0.2.1","192.0.2.3",1)
M["intmeth"] = ("!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\n"
"Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\n"
"To: \"BEL:\x07 NUL:\x00 DEL:\x7f\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\n"
"From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439\";tag=_token~1'+`*%!-.\n"
"Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\n"
"CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\n"
"Max-Forwards: 255\n"
"extensionHeader-!.%*+_`'~:\ufeff\u5927\u505c\u96fb\n"
"Content-Length: 0\n\n")
M["esc01"] = """INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 150

""" + SDP150
M["escnull"] = """REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0

"""
M["esc02"] = """RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0

"""
M["lwsdisp"] = """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

"""
vias = "".join("Via: SIP/2.0/TCP sip%d.example.com\n" % i for i in range(33, 0, -1))
M["longreq"] = ("INVITE sip:user@example.com SIP/2.0\n"
"To: \"I have a user name of " + "extreme "*10 + "proportion\" <sip:user@example.com:6000;unknownparam1=very" + "long"*20 + "value;longparam" + "name"*25 + "=shortvalue;very" + "long"*25 + "ParameterNameWithNoValue>\n"
"F: sip:" + "amazinglylongcallername"*5 + "@example.net;tag=12" + "982"*45 + "424;unknownheaderparam" + "name"*20 + "=unknowheaderparam" + "value"*15 + ";unknownValueless" + "paramname"*15 + "\n"
"Call-ID: longreq.one" + "really"*20 + "longcallid\n"
"CSeq: 3882340 INVITE\n"
"Unknown-" + "Long"*20 + "-Name: unknown-" + "long"*20 + "-value; unknown-" + "long"*20 + "-parameter-name = unknown-" + "long"*20 + "-parameter-value\n"
+ vias +
"Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=very" + "long"*50 + "branchvalue\n"
"Max-Forwards: 70\n"
"Contact: <sip:" + "amazinglylongcallername"*5 + "@host5.example.net>\n"
"Content-Type: application/sdp\n"
"l: 150\n\n" + SDP150)
M["dblreq"] = """REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0

INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: 150

""" + SDP150
M["semiuri"] = """OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
      multipart/mixed, multipart/signed,
      message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

"""
M["transports"] = """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

"""
M["mpart01"] = """MESSAGE sip:kumiko@example.org SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuL
From: "Bob" <sip:bob@example.com>;tag=2077b6bb
To: "Kumiko" <sip:kumiko@example.org>
Call-ID: 3f1b7de8d8dc26f8f43e4fc6b1ce15b0
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: RADIUS
Content-Length: 120

--7a9cbec02ceef655
Content-Type: text/plain
Content-Transfer-Encoding: binary

Hello
--7a9cbec02ceef655--
"""
M["unreason"] = """SIP/2.0 200 = 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e\u0441\u0442\u043e \u0434\u0435\u0432\u044f\u0442\u044c - \u043f\u0440\u043e\u0441\u0442\u043e\u0435
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

""" + SDP150
M["noreason"] = """SIP/2.0 100 
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"""
# 3.1.2 invalid
M["badinv01"] = """INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjasdf3234nas
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Length: 152
Content-Type: application/sdp

""" + SDP150
M["clerr"] = """INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

""" + SDP150
M["scalar02"] = """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 1000000000000000000000000000000000000000000000000000000000000000000000
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
Content-Length: 0

"""
M["scalarlg"] = """SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0

"""
M["quotbal"] = """INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
Content-Length: 152

""" + SDP150
M["ltgtruri"] = """INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 159

""" + SDP150
M["lwsruri"] = """INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 159

""" + SDP150
M["lwsstart"] = """INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 150

""" + SDP150
M["trws"] = "OPTIONS sip:remote-target@example.com SIP/2.0  \nVia: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093\nTo: <sip:remote-target@example.com>\nFrom: <sip:local-resource@example.com>;tag=329429089\nCall-ID: trws.oicu34958239neffasdhr2345r\nAccept: application/sdp\nCSeq: 238923 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n"
M["escruri"] = """INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Content-Length: 150

""" + SDP150
M["baddate"] = """INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 150

""" + SDP150
M["regbadct"] = """REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0

"""
M["badaspec"] = """OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0

"""
M["baddn"] = """OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0

"""
M["badvers"] = """OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0

"""
M["mismatch01"] = """OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0

"""
M["mismatch02"] = """NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Type: application/sdp
l: 138

""" + SDP150
M["bigcode"] = """SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"""
M["badbranch"] = """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK
Accept: application/sdp
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n
CSeq: 8 OPTIONS
l: 0

"""
M["insuf"] = """INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 152

""" + SDP150
M["unkscm"] = """OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"""
M["novelsc"] = """OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"""
M["unksm2"] = """REGISTER sip:example.com SIP/2.0
To: isbn:2983792873
From: <http://www.example.com>;tag=3234233
Call-ID: unksm2.daksdj@hyphenated-host.example.com
CSeq: 234902 REGISTER
Max-Forwards: 70
Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw
Contact: <name:John_Smith>
l: 0

"""
M["bext01"] = """OPTIONS sip:user@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.net;tag=242etr
Max-Forwards: 6
Call-ID: bext01.0ha0isndaksdj
Require: nothingSupportsThis, nothingSupportsThisEither
Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis
CSeq: 8 OPTIONS
Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw
Content-Length: 0

"""
M["invut"] = """INVITE sip:user@example.com SIP/2.0
Contact: <sip:caller@host5.example.net>
To: sip:j.user@example.com
From: sip:caller@example.net;tag=8392034
Max-Forwards: 70
Call-ID: invut.0ha0isndaksdjadsfij34n23d
CSeq: 235448 INVITE
Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw
Content-Type: application/unknownformat
Content-Length: 40

<audio>
 <pcmu port="443"/>
</audio>
"""
M["regaut01"] = """REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=87321hj23128
Max-Forwards: 8
Call-ID: regaut01.0ha0isndaksdj
CSeq: 9338 REGISTER
Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw
Authorization: NoOneKnowsThisScheme opaque-data=here
Content-Length:0

"""
M["multi01"] = """INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Type: application/sdp
l: 154
Contact: <sip:caller@host36.example.net>
Max-Forwards: 5

""" + SDP150
M["mcl01"] = """OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

There's no way to know how many octets are supposed to be here.
"""
M["zeroexp"] = """REGISTER sip:example.com SIP/2.0
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=1214521
Max-Forwards: 70
Call-ID: zeroexp.239423@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKkdjuw
Contact: <sip:user@host5.example.com>;expires=0
Expires: 0
l: 0

"""
M["cparam01"] = """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 2 REGISTER
Contact: sip:+19725552222@gw1.example.net;unknownparam
l: 0

"""
M["sdp01"] = """INVITE sip:user@example.com SIP/2.0
To: sip:j_user@example.com
Contact: <sip:caller@host15.example.net>
From: sip:caller@example.net;tag=234
Max-Forwards: 5
Call-ID: sdp01.ndaksdj9342dasdd
Accept: text/nobodyKnowsThis
CSeq: 8 INVITE
Via: SIP/2.0/UDP 60.63.67.71;branch=z9hG4bKkdjuw
Content-Length: 150
Content-Type: application/sdp

""" + SDP150
M["inv2543"] = """INVITE sip:UserB@example.com SIP/2.0
Via: SIP/2.0/UDP iftgw.example.com
From: <sip:+13035551111@ift.client.example.net;user=phone>
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>
To: sip:+16505552222@ss1.example.net;user=phone
Call-ID: inv2543.1717@ift.client.example.com
CSeq: 56 INVITE
Content-Type: application/sdp

""" + SDP150
M["sipfrag-notify"] = """NOTIFY sip:agentline@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKnotify1
From: <sip:1000@127.0.0.1>;tag=a1
To: <sip:agentline@127.0.0.1>;tag=b2
Call-ID: refer.1@127.0.0.1
CSeq: 3 NOTIFY
Event: refer;id=2
Subscription-State: terminated;reason=noresource
Content-Type: message/sipfrag;version=2.0
Content-Length: 16

SIP/2.0 200 OK
"""
M["info-dtmf"] = """INFO sip:agentline@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKinfo1
From: <sip:1000@127.0.0.1>;tag=a1
To: <sip:agentline@127.0.0.1>;tag=b2
Call-ID: info.1@127.0.0.1
CSeq: 4 INFO
Content-Type: application/dtmf-relay
Content-Length: 24

Signal=5
Duration=160
"""
M["register-digest"] = """REGISTER sip:127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKreg2;rport
From: <sip:1000@127.0.0.1>;tag=r1
To: <sip:1000@127.0.0.1>
Call-ID: reg.1@127.0.0.1
CSeq: 2 REGISTER
Contact: <sip:1000@127.0.0.1:5070;transport=udp>;expires=60
Authorization: Digest username="1000", realm="agentline", nonce="MTcwMDAwMDAwMDpiYWQ", uri="sip:127.0.0.1", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", qop=auth, nc=00000001, opaque="5ccc069c403ebaf9f0171e9517f40e41"
Expires: 60
Content-Length: 0

"""
M["invite-302"] = """SIP/2.0 302 Moved Temporarily
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKout1
From: <sip:agentline@127.0.0.1>;tag=o1
To: <sip:2000@127.0.0.1>;tag=t9
Call-ID: out.1@127.0.0.1
CSeq: 1 INVITE
Contact: <sip:3000@127.0.0.1:5080>;q=0.5, <sip:4000@127.0.0.1>
Content-Length: 0

"""
M["invite-session-timer"] = """INVITE sip:1000@127.0.0.1 SIP/2.0
Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKst1
From: <sip:+15551234567@127.0.0.1>;tag=st1
To: <sip:1000@127.0.0.1>
Call-ID: st.1@127.0.0.1
CSeq: 1 INVITE
Contact: <sip:caller@127.0.0.1:5070;transport=tcp>
P-Asserted-Identity: "Caller" <sip:+15551234567@trunk.example.com>
Session-Expires: 90;refresher=uac
Supported: timer, 100rel
Min-SE: 90
Proxy-Authorization: Digest username="1000",realm="agentline",nonce="abc",uri="sip:1000@127.0.0.1",response="00112233445566778899aabbccddeeff",algorithm=SHA-256,qop=auth,nc=00000002,cnonce="x"
Content-Type: application/sdp
Content-Length: 0

v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/SAVP 111 9 8 0 101
a=rtpmap:111 opus/48000/2
a=fmtp:111 useinbandfec=1
a=rtpmap:9 G722/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4
a=rtcp:6001 IN IP4 127.0.0.1
a=rtcp-mux
a=ptime:20
a=sendrecv
m=video 0 RTP/AVP 96
"""
os.makedirs(OUT, exist_ok=True)
for name, text in M.items():
    data = text.replace("\r\n", "\n").replace("\n", "\r\n")
    if name in ("invite-session-timer",):
        head, body = data.split("\r\n\r\n", 1)
        head = head.replace("Content-Length: 0", "Content-Length: %d" % len(body.encode()))
        data = head + "\r\n\r\n" + body
    with open(os.path.join(OUT, "rfc4475-" + name if name[0].islower() and name not in ("sipfrag-notify","info-dtmf","register-digest","invite-302","invite-session-timer") else "agentline-" + name), "wb") as f:
        f.write(data.encode("utf-8"))
print(len(M))
import json, struct, base64, re, glob
C=os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
def w(t, name, data):
    os.makedirs(os.path.join(C,t), exist_ok=True)
    if isinstance(data,str): data=data.encode()
    open(os.path.join(C,t,name),"wb").write(data)
# sdp: bodies of the sip corpus
for p in sorted(glob.glob(C+"/sip/*")):
    d=open(p,"rb").read()
    if b"\r\n\r\nv=0" in d:
        w("sdp", os.path.basename(p), d.split(b"\r\n\r\n",1)[1])
w("sdp","ipv6-savp","v=0\r\no=- 7 7 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0 101\r\na=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=recvonly\r\na=ptime:30\r\n")
w("sdp","hold","v=0\r\no=- 8 9 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 0\r\na=rtpmap:8 PCMA/8000\r\na=sendonly\r\na=rtcp:4001\r\n")
w("sdp","opus-g722","v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 111 9 96\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:9 G722/8000\r\na=rtpmap:96 telephone-event/48000\r\na=maxptime:60\r\nm=audio 5006 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\n")
# auth
auths = [
 'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"',
 'Digest username="Mufasa",\r\n realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
 'Digest username=1000,realm=agentline,nonce=abc,uri=sip:1000@127.0.0.1,response=00112233445566778899aabbccddeeff',
 'Digest username="1000", realm="agentline", nonce="MTcwMDAwMDAwMDpiYWQ", uri="sip:127.0.0.1", response="6629fae49393a05397450978507c4ef1", algorithm=MD5-sess, qop="auth", nc=ffffffff, cnonce=""',
 'NoOneKnowsThisScheme opaque-data=here',
]
for i,a in enumerate(auths): w("authorization","auth-%d"%i,a)
# rtp
def rtp(pt, seq, ts, ssrc, payload, marker=0, csrc=(), ext=None, pad=0):
    b0 = 0x80 | len(csrc) | (0x10 if ext is not None else 0) | (0x20 if pad else 0)
    h = struct.pack("!BBHII", b0, (marker<<7)|pt, seq, ts, ssrc)
    for c in csrc: h += struct.pack("!I", c)
    if ext is not None: h += struct.pack("!HH", 0xbede, len(ext)//4) + ext
    body = payload + (b"\0"*(pad-1) + bytes([pad]) if pad else b"")
    return h + body
w("rtp","pcmu-160", rtp(0, 1000, 160000, 0x12345678, bytes([0xff]*80+[0x7f]*80)))
w("rtp","marker-csrc-ext-pad", rtp(8, 65535, 0xffffffff, 1, b"\xd5"*40, 1, (7,8), b"\x10\xaa\x00\x00", 4))
w("rtp","opus", rtp(111, 2, 960, 0xdeadbeef, bytes.fromhex("fc ff fe")))
w("rtp","dtmf-end", rtp(101, 5, 8000, 0x12345678, bytes([5, 0x8a, 0x03, 0x20])))
for name, hx in [("sr-sdes","81c8000c71b3416beeaebb7936380021000177c8000001f4000138800deb95cf0000000000004ca500000005bb7436870004ff7c81ca000771b3416b01157369703a61403132372e302e302e313a323530363000"),
  ("bye-sdes","81cb00030deb95cf0441646a6f00000081ca00070deb95cf01157369703a62403132372e302e302e313a323530363200"),
  ("app-ping","80cc000371b3416b50494e47504f4e47"),
  ("rr-one","81c900075a4c2f10b1e2d3c40c00002a0001022b00000013bb79363800018000"),
  ("rr-neg","81c900075a4c2f10b1e2d3c400fffffd00010005000000000000000000000000")]:
    w("rtcp", name, bytes.fromhex(hx))
    w("rtp", "rtcp-"+name, bytes.fromhex(hx))
# srtp: plaintext rtp/rtcp (the target protects then unprotects)
for p in sorted(glob.glob(C+"/rtp/*")):
    w("srtp", os.path.basename(p), open(p,"rb").read())
# dtmf payloads
for i,(ev,flags,dur) in enumerate([(0,0x0a,160),(11,0x8a,800),(16,0x80,0),(5,0x80,0xffff),(255,0xff,1)]):
    w("dtmf","ev-%d"%i, bytes([ev,flags])+struct.pack("!H",dur))
# audiosocket frames: kind, u16 BE length, payload
def frame(k,p): return bytes([k])+struct.pack("!H",len(p))+p
w("audiosocket","uuid-audio-dtmf-hangup", frame(1, bytes(range(16))) + frame(0x10, b"\x00\x01"*160) + frame(3, b"5") + frame(0, b""))
w("audiosocket","error", frame(0xff, b"\x02"))
w("audiosocket","audio-odd", frame(0x10, b"\x01"*161))
# wav headers
def wav(rate=8000, ch=1, bits=16, fmt=1, data=b"\0\0"*40, extra=b"", riff=None, dsize=None):
    fmtc = struct.pack("<HHIIHH", fmt, ch, rate, rate*ch*bits//8, ch*bits//8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I",len(fmtc)) + fmtc + extra + b"data" + struct.pack("<I", len(data) if dsize is None else dsize) + data
    return b"RIFF" + struct.pack("<I", len(body) if riff is None else riff) + body
w("wav","mono8k", wav())
w("wav","stereo16k-list", wav(16000, 2, extra=b"LIST"+struct.pack("<I",4)+b"INFO"))
w("wav","streaming-sizes", wav(24000, riff=0xffffffff, dsize=0xffffffff))
w("wav","alaw", wav(fmt=6, bits=8))
w("wav","extensible", wav(fmt=0xfffe))
# openai realtime events
a = base64.b64encode(b"\xff\x7f"*80).decode()
ev = [
 {"type":"session.created","session":{"id":"sess_1"}},
 {"type":"response.output_audio.delta","delta":a,"item_id":"item_1","event_id":"e1"},
 {"type":"response.audio.delta","delta":a},
 {"type":"input_audio_buffer.speech_started","audio_start_ms":100,"item_id":"u1"},
 {"type":"input_audio_buffer.speech_stopped","audio_end_ms":900,"item_id":"u1"},
 {"type":"conversation.item.input_audio_transcription.completed","item_id":"u1","transcript":"hello"},
 {"type":"response.output_audio_transcript.done","transcript":"Hi, how can I help?"},
 {"type":"response.done","response":{"status":"completed"}},
 {"type":"response.function_call_arguments.done","name":"transfer_call","call_id":"c1","arguments":"{\"to\":\"sip:2000@example.com\"}"},
 {"type":"response.function_call_arguments.done","name":"end_call","call_id":"c2"},
 {"type":"error","error":{"type":"invalid_request_error","code":"bad","message":"Missing required parameter"}},
]
for i,e in enumerate(ev): w("openai_realtime","ev-%02d"%i, json.dumps(e))
# avr sts
sts = [{"type":"audio","audio":a},{"type":"transcript","role":"user","text":"hello"},{"type":"transcript","role":"agent","text":"hi"},
 {"type":"interruption"},{"type":"tool_invocation","toolName":"transfer","args":{"to":"1001"}},{"type":"error","message":"boom"},
 {"type":"audio","audio":"!!not base64!!"}]
for i,e in enumerate(sts): w("avr_sts","ev-%02d"%i, json.dumps(e))
w("avr_sts","junk", '{"type": "audio", "audio": ')
# avr pipeline llm stream
w("avr_pipeline","text-objects", b"".join(json.dumps({"type":"text","content":p}).encode() for p in ["Hello ","there. ","How are you?"]))
w("avr_pipeline","plain-text", "Hello there. How are you?")
w("avr_pipeline","error", json.dumps({"type":"error","message":"LLM down"}))
w("avr_pipeline","tool", json.dumps({"type":"tool","name":"transfer","args":{}}) + "\n" + json.dumps({"type":"text","content":"ok"}))
# openai compat: SSE / completion / transcription / speech
def chunk(d, fin=None): return b"data: " + json.dumps({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":d,"finish_reason":fin}]}).encode() + b"\n\n"
w("openai_compat_llm","sse", chunk({"role":"assistant"}) + chunk({"content":"Hello"}) + chunk({"content":" there."}) + chunk({}, "stop") + b"data: [DONE]\n\n")
w("openai_compat_llm","sse-error", b": keep-alive\n\nevent: x\ndata: " + json.dumps({"error":{"message":"rate limited","code":"429"}}).encode() + b"\n\n")
w("openai_compat_llm","completion", json.dumps({"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]}))
w("openai_compat_llm","transcription", json.dumps({"text":"hello there"}))
w("openai_compat_speech","raw-pcm", b"\x00\x10"*480)
w("openai_compat_speech","wav-24k", wav(24000, data=b"\x00\x10"*240))
w("openai_compat_speech","wav-stream", wav(22050, ch=2, riff=0xffffffff, dsize=0xffffffff, data=b"\x01\x02"*100))
print("ok")
